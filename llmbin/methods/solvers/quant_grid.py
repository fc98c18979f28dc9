"""Asymmetric min-max integer grid (RTN/GPTQ and the 4-/8-bit parts of mixed methods).

scale = (max - min) / (2^b - 1) with the range forced to include 0, zero = round(-min / scale),
q = clamp(round(w / scale) + zero, 0, 2^b - 1). Scales are rounded to float16 when computed, so
the values the algorithms see are exactly the values the packed checkpoint stores.
"""
from __future__ import annotations

import torch

SCALE_FLOOR = 1e-7  # keeps tiny rows finite after float16 rounding


def minmax_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of w [N, G] -> (scale [N] float16-representable, zero [N] integer-valued), float32."""
    return range_params(w.min(dim=1).values, w.max(dim=1).values, bits)


def range_params(wmin: torch.Tensor, wmax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of 2^b levels spanning [wmin, wmax] (widened to include 0) -> (scale, zero) per row."""
    maxq = 2**bits - 1
    wmin, wmax = torch.clamp(wmin, max=0), torch.clamp(wmax, min=0)
    flat = (wmin == 0) & (wmax == 0)
    wmin, wmax = torch.where(flat, -1.0, wmin), torch.where(flat, 1.0, wmax)
    scale = ((wmax - wmin) / maxq).clamp(min=SCALE_FLOOR).half().float()
    zero = torch.clamp(torch.round(-wmin / scale), 0, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero) * scale


SHRINKS = tuple(1 - 0.025 * k for k in range(13))  # 1.0 .. 0.7: clipping more than 30% of the range never paid off


def mse_params(w: torch.Tensor, bits: int, importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Like minmax_params, but the range [min, max] is shrunk per row by the factor in SHRINKS that minimizes
    sum_j importance_j (w_j - q_j)^2: clipping a few outliers buys a finer grid for all other weights.
    `importance` [G] weighs the columns (diag of the Hessian: how much each input matters); None = equal."""
    wmin, wmax = w.min(dim=1).values, w.max(dim=1).values
    best = minmax_params(w, bits)
    best_err = torch.full((w.shape[0],), float("inf"))
    for shrink in SHRINKS:
        scale, zero = range_params(wmin * shrink, wmax * shrink, bits)
        err = (w - dequantize_codes(quantize_codes(w, scale[:, None], zero[:, None], bits), scale[:, None],
                                    zero[:, None])) ** 2
        err = (err @ importance) if importance is not None else err.sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better, scale, best[0]), torch.where(better, zero, best[1]))
    return best
