"""Per-row sign binarization over a subset of each row, and ARB-style alternating refinement.

    w_hat = alpha * sign(w - mu) + mu,   mu = mean(w), alpha = mean|w - mu|   (per row, over `keep`)

stored as one bit plane with A = 2*alpha, C = mu - alpha (KERNELS.md): w_hat = A*b + C, b in {0, 1}.
A and C are rounded through float16 when they are made, and the two levels C and C + A are then
what every caller uses, so fake-quant values equal what a packed checkpoint dequantizes to.
"""
from __future__ import annotations

import torch

from ...errors import LlmbinError

VARIANTS = ("paper", "code")


def binary_mean_scale(weight: torch.Tensor, keep: torch.Tensor | None = None, variant: str = "paper"):
    """Per-row (mu [N], alpha [N]) of the weights selected by `keep` [N, K] (None: all).

    paper: means over the kept weights only (a row with none kept gets mu = alpha = 0);
    code:  means over ALL K columns with the dropped positions set to zero (PB-LLM's reference code).
    """
    w = weight.float()
    if keep is None:
        keep = torch.ones_like(w, dtype=torch.bool)
    if variant == "code":
        wz = torch.where(keep, w, 0.0)
        mu = wz.mean(1)
        return mu, (wz - mu[:, None]).abs().mean(1)
    if variant == "paper":
        count = keep.sum(1).clamp(min=1)
        mu = torch.where(keep, w, 0.0).sum(1) / count
        alpha = torch.where(keep, (w - mu[:, None]).abs(), 0.0).sum(1) / count
        return mu, alpha
    raise LlmbinError(f"unknown binarization variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def arb_refine(weight: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor, keep: torch.Tensor | None = None,
               iters: int = 15):
    """ARB-LLM alternating refinement of (mu, alpha) per row over `keep`, `iters` rounds of
        B = sign(W - mu); mu += mean(W - (alpha B + mu)); alpha = sum(B (W - mu)) / sum(B^2).
    Each step is a least-squares update of one parameter with the others fixed, so the row's
    squared error over `keep` never increases."""
    w = weight.float()
    if keep is None:
        keep = torch.ones_like(w, dtype=torch.bool)
    keepf = keep.float()
    count = keepf.sum(1).clamp(min=1)
    mu, alpha = mu.clone().float(), alpha.clone().float()
    for _ in range(iters):
        sign = torch.where(w >= mu[:, None], 1.0, -1.0) * keepf
        w_hat = alpha[:, None] * sign + mu[:, None]
        mu = mu + ((w - w_hat) * keepf).sum(1) / count
        alpha = (sign * (w - mu[:, None])).sum(1) / count  # sum(B^2) = count on the kept entries
    return mu, alpha.clamp(min=0)


def binary_levels(mu: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (A, C) per row as float32 holding float16 values; the levels are C and A + C."""
    scale = (2 * alpha).half().float()
    offset = (mu - alpha).half().float()
    return scale, offset


def binarize(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor):
    """Nearest of the two levels C, A + C for values w [N] or [N, K] with per-row A, C [N].

    -> (bits bool, values float32); values are computed as A*b + C, the packed format's own arithmetic.
    """
    if w.dim() == 2:
        scale, offset = scale[:, None], offset[:, None]
    bits = w >= offset + scale / 2
    return bits, torch.where(bits, scale, 0.0) + offset
