"""Text the model writes itself: calibration and distillation windows that keep what the model already knows.

Calibrating (or distilling) on the user's text alone teaches a quantized model that text and costs it the rest
(Qwen2.5-Coder calibrated on code lost 27x in English perplexity). Windows the full-precision model samples itself
cover its own distribution instead. Each batch starts from one opener, drawn from a fixed set of plain-text
beginnings (prose, dialogue, lists, code) and instructions wrapped in the model's chat template when it has one,
and continues with nucleus sampling (temperature 0.9, top-p 0.95): a diverse, fluent sample, not greedy loops.
A window whose distinct 4-grams are under half of its 4-grams is a degenerate loop and is drawn again. Windows are
cached by key (the model's config and embedding bytes, count, length, seed, settings) under
$LLMBIN_CACHE/selfgen, so a rerun or a resumed run reuses them.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..host.files import cache_root, digest, load_tensors, save_tensors
from ..models.cache_api import cache_kwargs, returned_cache

SETTINGS = {"version": 2, "temperature": 0.9, "top_p": 0.95, "min_distinct_4grams": 0.5, "max_tries": 4}
OPENERS = [
    "The history of", "In a recent study, researchers", "Once upon a time,", "The following is an interview with",
    "Here is a recipe for", "Q: What is the difference between", "Dear editor,", "The main reasons are:\n1.",
    "def main():\n", "In mathematics, a", "The city council voted", "Chapter 1\n\n", "According to the report,",
    "import numpy as np\n", "The best way to learn", "Yesterday I", "Abstract: We", "- Item", "The weather", "It was",
]
INSTRUCTIONS = [
    "Write a short story about a lighthouse keeper.", "Explain how vaccines work to a ten-year-old.",
    "Summarize the causes of the French Revolution.", "Write a Python function that merges two sorted lists.",
    "Describe a day in the life of a farmer.", "What are the pros and cons of remote work?",
    "Write a letter asking for a refund.", "Explain the difference between weather and climate.",
    "Give advice to someone learning to cook.", "Write a news report about a local festival.",
]


def generate_windows(model, tokenizer, nsamples: int, seqlen: int, seed: int, batch_size: int = 8,
                     cache: bool = True) -> torch.Tensor:
    """[nsamples, seqlen] int64 token windows sampled from `model` (see the module docstring)."""
    key = digest([SETTINGS, _model_key(model), nsamples, seqlen, seed, len(tokenizer), batch_size])
    path = cache_root() / "selfgen" / f"{key}.safetensors"
    if cache and path.is_file():
        tensors, info = load_tensors(path)
        if info.get("key") == key and tuple(tensors["windows"].shape) == (nsamples, seqlen):
            return tensors["windows"]
    vocab = model.get_input_embeddings().num_embeddings
    openers = [o for o in _openers(tokenizer) if len(o) and int(o.max()) < vocab]
    openers = openers or [torch.tensor([i]) for i in range(min(vocab, len(tokenizer), 1000))]  # a toy vocabulary
    gen = torch.Generator().manual_seed(seed)
    out, refused = [], 0  # refused in a row: after max_tries a window is kept anyway, so sampling always ends
    # counted in tokens, not windows: a batch's windows all end together, so a window count jumps once a batch
    # and its ETA is wrong by the batch size (Qwen 0.5B: "47 min" for ~8)
    with tqdm(total=nsamples * seqlen, desc="selfgen text", unit="tok", unit_scale=True) as bar:
        while len(out) < nsamples:
            b = min(batch_size, nsamples - len(out))
            prompt = openers[int(torch.randint(len(openers), (1,), generator=gen))]
            for window in _sample(model, prompt, b, seqlen, gen, bar.update):
                if len(out) == nsamples:
                    break
                if _fluent(window) or refused >= SETTINGS["max_tries"]:
                    out.append(window)
                    refused = 0
                else:
                    refused += 1
                    bar.total += seqlen  # drawn again
                    bar.refresh()
    windows = torch.stack(out)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, {"windows": windows}, {"key": key, "settings": SETTINGS})
    return windows


def _model_key(model) -> str:
    """What identifies the weights cheaply: the config and the token embedding's bytes."""
    embedding = model.get_input_embeddings()
    weight = getattr(embedding, "weight", None)
    sample = weight.detach()[:: max(1, weight.shape[0] // 512)] if weight is not None else torch.zeros(1)
    return digest([model.config.to_dict(), sample])


def _openers(tokenizer) -> list[torch.Tensor]:
    texts = list(OPENERS)
    if getattr(tokenizer, "chat_template", None):
        texts += [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True) for q in INSTRUCTIONS]
    return [torch.tensor(tokenizer(t, add_special_tokens=False).input_ids, dtype=torch.int64) for t in texts]


@torch.no_grad()
def _sample(model, prompt: torch.Tensor, batch: int, seqlen: int, gen: torch.Generator,
            progress=lambda tokens: None) -> list[torch.Tensor]:
    """`batch` continuations of `prompt`, nucleus-sampled with a KV cache; each window is [seqlen] tokens."""
    device = next(model.parameters()).device
    ids = prompt[: seqlen - 1].repeat(batch, 1)
    past, step = None, ids
    progress(ids.numel())
    while ids.shape[1] < seqlen:
        res = model(input_ids=step.to(device), use_cache=True, **cache_kwargs(past))
        past = returned_cache(res)
        probs = torch.softmax(res.logits[:, -1].float().cpu() / SETTINGS["temperature"], -1)
        top, idx = _descending(probs)
        keep = top.cumsum(-1) - top < SETTINGS["top_p"]  # the smallest prefix reaching top_p
        top = torch.where(keep, top, torch.zeros_like(top))
        step = idx.gather(1, torch.multinomial(top, 1, generator=gen))
        ids = torch.cat([ids, step], 1)
        progress(batch)
    return list(ids)


def _descending(probs: torch.Tensor, head: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's probabilities in descending order, as far as the nucleus needs: the `head` largest when they hold
    top_p of the mass in every row (a full sort of a 50k vocabulary costs a quarter of a batch-32 step), else all."""
    if probs.shape[-1] > head:
        top, idx = probs.topk(head, -1)
        if bool((top.sum(-1) >= SETTINGS["top_p"]).all()):
            return top, idx
    return probs.sort(-1, descending=True)


def _fluent(window: torch.Tensor) -> bool:
    grams = list(zip(*(window[i:].tolist() for i in range(4))))
    return len(set(grams)) >= SETTINGS["min_distinct_4grams"] * max(1, len(grams))
