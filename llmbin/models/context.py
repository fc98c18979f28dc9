"""The longest input a model accepts, as its config declares it (under whichever name its family uses)."""
from __future__ import annotations


def max_context(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None) or getattr(getattr(config, "text_config", None), key, None)
        if value:
            return int(value)
    return None
