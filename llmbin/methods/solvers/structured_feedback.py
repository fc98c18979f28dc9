"""Hessian error feedback for PTQ1.61's fixed parts: the signs of the binarized columns and the 4-bit codes
of the salient columns, chosen by the GPTQ column loop instead of plain rounding.

The columns are visited in the stored order (binarized ascending, then salient ascending), so each
binarized column's rounding error moves the columns still to come, and the salient columns, quantized
last on their finer 4-bit grid, absorb what the binary part left. Per-row mu, alpha and the salient
grid are the plain initialisation's (fitted on the original weights) and stay fixed during the loop;
block training then learns the scales on top of these signs as before. Nothing stored changes size.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .gptq_loop import gptq_quantize
from .quant_grid import dequantize_codes, quantize_codes
from .structured_mask import SALIENT_BITS, StructuredBinary


class StructuredColumnQuantizer:
    """The GPTQ loop's column quantizer for one StructuredBinary: records the signs and codes it picks."""

    def __init__(self, sb: StructuredBinary):
        self.sb, self.group_size = sb, sb.perm.numel()  # parameters are per row: one group, fitted already
        self.position = torch.empty_like(sb.perm)
        self.position[sb.perm] = torch.arange(sb.perm.numel())
        self.signs, self.codes = sb.signs.clone(), sb.salient_codes.clone()

    def start_group(self, col: int, w_group: torch.Tensor) -> None:
        pass  # mu, alpha and the salient grid come from the initialisation

    def quantize(self, col: int, w: torch.Tensor) -> torch.Tensor:
        j, sb = int(self.position[col]), self.sb
        if j < sb.k_bin:
            s = torch.where(w >= sb.mu, 1.0, -1.0)
            self.signs[:, j] = s
            return sb.alpha * s + sb.mu
        q = quantize_codes(w, sb.salient_scale, sb.salient_zero, SALIENT_BITS)
        self.codes[:, j - sb.k_bin] = q.to(torch.uint8)
        return dequantize_codes(q, sb.salient_scale, sb.salient_zero)


def gptq_signs(sb: StructuredBinary, weight: torch.Tensor, hessian: torch.Tensor, percdamp: float = 0.01,
               blocksize: int = 128) -> StructuredBinary:
    """sb with its signs and salient codes re-chosen by the GPTQ column loop on the input Hessian (scales kept)."""
    quantizer = StructuredColumnQuantizer(sb)
    gptq_quantize(weight.float().cpu(), hessian.float().cpu(), quantizer, blocksize, percdamp, order=sb.perm)
    return replace(sb, signs=quantizer.signs, salient_codes=quantizer.codes)


def hessian_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr((W - W') H (W - W')^T) / tr(W H W^T): the layer's output error on the calibration inputs, relative.

    Dead input channels (H_jj == 0) carry no signal and are left out, as the GPTQ loop does."""
    w, h = weight.float().cpu(), hessian.float().cpu()
    live = torch.diag(h) > 0
    w, e, h = w[:, live], (w - approx.float().cpu())[:, live], h[live][:, live]
    return float(((e @ h) * e).sum() / ((w @ h) * w).sum().clamp_min(1e-30))

