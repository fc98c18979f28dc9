"""Prefill speed: how fast a model takes in a prompt of n tokens (llama-bench's ppN, measured the same way).

One forward of n tokens with a fresh cache, logits of the last token only (what a prompt's prefill computes before
the first new token), timed after one untimed warm-up of the same length; the mean of `reps` timed forwards is
reported. Tokens are drawn at random from the vocabulary (seeded), as llama-bench does: speed does not depend on
what the tokens say. Every packed matrix is repacked before timing (prepare_packed), so only compute is timed.
"""
from __future__ import annotations

import os
import time

import torch

from ..models.cache_api import cache_kwargs
from .decoder import prepare_packed

PREFILL_LENGTHS = (64, 512)


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


@torch.inference_mode()
def prefill_seconds(model, tokens: int, reps: int = 3, seed: int = 0) -> list[float]:
    """Seconds of each of `reps` timed prefills of `tokens` random tokens (after one warm-up)."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    prepare_packed(model)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(seed)).to(device)
    cache = StaticCache(config=model.config, max_cache_len=tokens)
    times = []
    for rep in range(reps + 1):
        cache.reset()
        start = time.perf_counter()
        model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if rep:
            times.append(time.perf_counter() - start)
    return times


def prefill_rows(label: str, model, lengths=PREFILL_LENGTHS, reps: int = 3) -> list[dict]:
    rows = []
    for n in lengths:
        start_load = _loadavg()
        times = prefill_seconds(model, n, reps)
        rows.append({"model": label, "path": f"prefill pp{n}", "prompt_tokens": n,
                     "prefill_tokens_per_s": round(n * len(times) / sum(times), 2),
                     "prefill_tokens_per_s_best": round(n / min(times), 2), "reps": len(times),
                     "threads": torch.get_num_threads(), "loadavg_start": start_load, "loadavg_end": _loadavg()})
    return rows
