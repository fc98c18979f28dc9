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
    maxq = 2**bits - 1
    wmin = torch.clamp(w.min(dim=1).values, max=0)
    wmax = torch.clamp(w.max(dim=1).values, min=0)
    flat = (wmin == 0) & (wmax == 0)
    wmin, wmax = torch.where(flat, -1.0, wmin), torch.where(flat, 1.0, wmax)
    scale = ((wmax - wmin) / maxq).clamp(min=SCALE_FLOOR).half().float()
    zero = torch.clamp(torch.round(-wmin / scale), 0, maxq)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero) * scale
