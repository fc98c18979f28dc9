"""Token windows: random calibration windows (GPTQ reference loader's sampling) and non-overlapping eval windows."""
from __future__ import annotations

import hashlib
import random

import torch

from ..errors import LlmbinError


def token_stream(tokenizer, text: str) -> torch.Tensor:
    """Tokenize the whole text without special tokens -> 1-D int64 tensor."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "sequence longer than model max" is expected here
    try:
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    finally:
        transformers.logging.set_verbosity(verbosity)
    return torch.tensor(ids, dtype=torch.int64)


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """[nsamples, seqlen] windows; start i = rng.randint(0, n - seqlen - 1) per window, rng = Random(seed)."""
    n = ids.numel()
    if n < seqlen + 2:
        raise LlmbinError(f"calibration text has {n} tokens, fewer than one window of {seqlen} (+2); "
                          "give more text or lower --seqlen")
    rng = random.Random(seed)
    starts = [rng.randint(0, n - seqlen - 1) for _ in range(nsamples)]
    return torch.stack([ids[i:i + seqlen] for i in starts])


def evaluation_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    count = ids.numel() // seqlen
    if count == 0:
        raise LlmbinError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}; "
                          "give more text or lower --seqlen")
    if max_windows:
        count = min(count, max_windows)
    return ids[: count * seqlen].view(count, seqlen)


def token_hash(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
