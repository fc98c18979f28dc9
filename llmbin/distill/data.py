"""Distillation windows: training and held-out windows that never share a token position.

The text's token stream is cut into non-overlapping windows of `seqlen`; a seeded permutation picks
the held-out windows first and the training windows from the rest, so the two sets are disjoint by
construction (unlike calibration windows, which are sampled at random starts and may overlap).
Data-free (`selfgen`): every window is sampled independently from the teacher; the last ones are held out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import load_text, token_stream
from ..data.selfgen import generate_windows
from ..errors import LlmbinError


@dataclass
class DistillWindows:
    train: torch.Tensor  # int64 [n_train, seqlen]
    held_out: torch.Tensor  # int64 [n_eval, seqlen]
    train_starts: list[int]  # token offsets in the source stream (empty for selfgen)
    held_out_starts: list[int]
    source: str

    def all(self) -> torch.Tensor:
        return torch.cat([self.train, self.held_out])


def disjoint_windows(ids: torch.Tensor, n_train: int, n_eval: int, seqlen: int, seed: int, source: str = "text",
                     log=None) -> DistillWindows:
    count = ids.numel() // seqlen
    if count < 2:
        raise LlmbinError(f"the distillation text ({source}) has {ids.numel()} tokens, fewer than two windows of "
                          f"{seqlen}; give more text or lower distill.seqlen")
    n_eval = min(n_eval, max(1, count // 8))
    if n_train + n_eval > count:
        if log is not None:
            log.note(f"distill: {source} has only {count} windows of {seqlen} tokens; training on {count - n_eval} "
                     f"instead of {n_train} (more need more text: a longer file, distill.fill=selfgen or "
                     "distill.data=selfgen)")
        n_train = count - n_eval
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held, train = sorted(order[:n_eval]), order[n_eval:n_eval + n_train]
    chunks = ids[: count * seqlen].view(count, seqlen)
    return DistillWindows(chunks[train], chunks[held], [i * seqlen for i in train], [i * seqlen for i in held], source)


def selfgen_windows(teacher, tokenizer, n_train: int, n_eval: int, seqlen: int, seed: int) -> DistillWindows:
    windows = generate_windows(teacher, tokenizer, n_train + n_eval, seqlen, seed)
    return DistillWindows(windows[:n_train], windows[n_train:], [], [], "selfgen")


def text_windows(dataset: str, tokenizer, n_train: int, n_eval: int, seqlen: int, seed: int, log=None) -> DistillWindows:
    ids = token_stream(tokenizer, load_text(dataset, split="calibration"))
    return disjoint_windows(ids, n_train, n_eval, seqlen, seed, dataset, log)


def filled_windows(text: DistillWindows, teacher, tokenizer, options) -> DistillWindows:
    """The text's windows topped up to `options.nsamples` training windows with windows the teacher writes, and
    the held-out set in the same share, so the best state is chosen on both kinds of text."""
    n_gen = options.nsamples - len(text.train)
    if n_gen <= 0:
        return text
    n_gen_eval = round(len(text.held_out) * n_gen / len(text.train))
    # Batches of 32 continuations of one opener: SmolLM2's forward costs ~1.8x less a token than in batches of 8.
    gen = generate_windows(teacher, tokenizer, n_gen + n_gen_eval, text.train.shape[1], options.seed + 2, batch_size=32)
    return DistillWindows(torch.cat([text.train, gen[:n_gen]]), torch.cat([text.held_out, gen[n_gen:]]),
                          text.train_starts, text.held_out_starts, f"{text.source} + {n_gen} selfgen windows")


def mixed_windows(text: DistillWindows, teacher, tokenizer, options) -> DistillWindows:
    """The text's windows with `options.selfgen_share` of them replaced by windows the teacher writes: training
    windows are swapped, held-out ones added in the same share, so the best state is chosen on both."""
    n_gen = round(options.selfgen_share * len(text.train))
    n_gen_eval = round(options.selfgen_share * len(text.held_out))
    if n_gen == 0 and n_gen_eval == 0:
        return text
    gen = generate_windows(teacher, tokenizer, n_gen + n_gen_eval, text.train.shape[1], options.seed + 1)
    keep = len(text.train) - n_gen
    return DistillWindows(torch.cat([text.train[:keep], gen[:n_gen]]), torch.cat([text.held_out, gen[n_gen:]]),
                          text.train_starts[:keep], text.held_out_starts,
                          f"{text.source} + {options.selfgen_share:.0%} selfgen")
