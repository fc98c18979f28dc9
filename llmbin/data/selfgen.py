"""Data-free calibration: windows of text sampled from the model itself (seeded, temperature 1, top-k 50)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..models.cache_api import cache_kwargs, returned_cache


@torch.no_grad()
def generate_windows(model, tokenizer, nsamples: int, seqlen: int, seed: int, batch_size: int = 16,
                     top_k: int = 50) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    out = []
    for start in tqdm(range(0, nsamples, batch_size), desc="selfgen calibration text", unit="batch"):
        b = min(batch_size, nsamples - start)
        # first token: uniform over the tokenizer's ordinary vocabulary, as in data-free LLM-QAT
        ids = torch.randint(0, min(vocab, len(tokenizer)), (b, 1), generator=gen)
        past = None
        step_ids = ids
        for _ in range(seqlen - 1):
            res = model(input_ids=step_ids.to(device), use_cache=True, **cache_kwargs(past))
            past = returned_cache(res)
            logits = res.logits[:, -1].float().cpu()
            top, idx = logits.topk(top_k, dim=-1)
            choice = torch.multinomial(torch.softmax(top, -1), 1, generator=gen)
            step_ids = idx.gather(1, choice)
            ids = torch.cat([ids, step_ids], 1)
        out.append(ids)
    return torch.cat(out)
