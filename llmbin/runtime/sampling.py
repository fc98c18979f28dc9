"""Choosing the next token from logits: greedy, or seeded temperature / top-p sampling."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import LlmbinError


@dataclass
class Sampler:
    """temperature <= 0: greedy (argmax). Else softmax(logits / T), cut to the top-p nucleus, seeded draw."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    generator: torch.Generator = field(init=False)

    def __post_init__(self):
        if not 0 < self.top_p <= 1:
            raise LlmbinError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise LlmbinError(f"--temperature must be >= 0, got {self.temperature}")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        logits = logits.float().reshape(-1)
        if self.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < self.top_p  # the smallest prefix reaching top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
