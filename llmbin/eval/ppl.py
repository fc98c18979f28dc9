"""Perplexity under a labelled protocol.

"gptq": tokenize the whole text without special tokens, cut it into non-overlapping windows of
seqlen tokens, perplexity = exp(mean next-token NLL over every predicted token of the windows).
With bos=True a BOS token is put before each window (Gemma needs it) and all seqlen tokens are predicted.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import evaluation_windows, load_text, token_stream
from ..errors import LlmbinError
from ..models.context import max_context

PROTOCOL = "gptq"


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, bos_id: int | None, batch_size: int, desc: str) -> tuple[float, int]:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, unit="batch", leave=False):
        ids = windows[start:start + batch_size].to(device)
        if bos_id is not None:
            ids = torch.cat([torch.full((ids.shape[0], 1), bos_id, device=device, dtype=ids.dtype), ids], 1)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        target = ids[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
        count += target.numel()
    return total, count


def perplexity(model, tokenizer, source: str, seqlen: int = 2048, max_windows: int | None = None, bos: bool = False,
               batch_size: int = 4) -> dict:
    start = time.perf_counter()
    ids = token_stream(tokenizer, load_text(source, split="evaluation"))
    windows = evaluation_windows(ids, seqlen, max_windows)
    bos_id = tokenizer.bos_token_id if bos else None
    if bos and bos_id is None:
        raise LlmbinError("--bos asked for but the tokenizer has no BOS token")
    nll, count = window_nll(model, windows, bos_id, batch_size, desc=f"ppl {source}")
    return {"name": source, "protocol": PROTOCOL, "seqlen": seqlen, "windows": int(len(windows)), "bos": bos,
            "tokens": count, "ppl": math.exp(nll / count), "seconds": round(time.perf_counter() - start, 2)}


def evaluate_ppl(model, tokenizer, sources: list[str], seqlen: int, max_windows: int | None = None,
                 bos: bool = False) -> list[dict]:
    """Perplexity of `model` on each text in `sources` (files or wikitext2, c4, ptb), protocol "gptq"."""
    context = max_context(model.config)
    if context is not None and seqlen > context:
        raise LlmbinError(f"seqlen {seqlen} is above the model's context of {context} tokens")
    return [perplexity(model, tokenizer, s, seqlen, max_windows, bos) for s in sources]
