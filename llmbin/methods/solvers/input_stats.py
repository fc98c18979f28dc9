"""Streaming statistics of a linear's inputs, accumulated by forward hooks.

H = (2/N) sum x x^T kept as a running mean in float32 (GPTQ's convention), per-channel |x| max and
mean, and the number of tokens seen (an MoE expert may see none).
"""
from __future__ import annotations

import torch


class InputStats:
    def __init__(self, in_features: int, want: set[str], device: torch.device):
        self.want = want
        self.tokens = 0
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if "hessian" in want else None
        self.absmax = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.abssum = torch.zeros(in_features, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        if n == 0:
            return
        a = x.abs()
        self.absmax = torch.maximum(self.absmax, a.amax(0))
        self.abssum += a.sum(0, dtype=torch.float64)
        if self.hessian is not None:
            total = self.tokens + n
            self.hessian.mul_(self.tokens / total)
            xs = x * (2.0 / total) ** 0.5
            self.hessian.addmm_(xs.T, xs)
        self.tokens += n

    @property
    def absmean(self) -> torch.Tensor:
        return (self.abssum / max(self.tokens, 1)).float()
