"""Per-group asymmetric integer quantizer that records codes for the uniform packed format."""
from __future__ import annotations

import torch

from ...formats import UniformFormat
from ...errors import LlmbinError
from .quant_grid import dequantize_codes, minmax_params, mse_params, quantize_codes

FITS = ("minmax", "mse")


class UniformColumnQuantizer:
    """fit="minmax": each group's grid spans its min..max; fit="mse": the shrunk range with the least
    (importance-weighted) squared error, importance [in_features] e.g. diag(H) (None: equal weights)."""

    def __init__(self, out_features: int, in_features: int, bits: int, group_size: int, fit: str = "minmax",
                 importance: torch.Tensor | None = None):
        if fit not in FITS:
            raise LlmbinError(f"fit={fit!r} is not known; choose one of {', '.join(FITS)}")
        self.fit, self.importance = fit, importance
        self.bits = bits
        self.group_size = in_features if group_size <= 0 else group_size
        ng = -(-in_features // self.group_size)
        self.codes = torch.zeros(out_features, in_features, dtype=torch.uint8)
        self.scales = torch.zeros(out_features, ng)
        self.zeros = torch.zeros(out_features, ng)

    def start_group(self, col: int, w_group: torch.Tensor) -> None:
        g = col // self.group_size
        if self.fit == "mse":
            imp = None if self.importance is None else self.importance[col:col + w_group.shape[1]].float()
            self.scales[:, g], self.zeros[:, g] = mse_params(w_group, self.bits, imp)
        else:
            self.scales[:, g], self.zeros[:, g] = minmax_params(w_group, self.bits)

    def quantize(self, col: int, w: torch.Tensor) -> torch.Tensor:
        g = col // self.group_size
        q = quantize_codes(w, self.scales[:, g], self.zeros[:, g], self.bits)
        self.codes[:, col] = q.to(torch.uint8)
        return dequantize_codes(q, self.scales[:, g], self.zeros[:, g])

    def quantize_all(self, weight: torch.Tensor) -> None:
        """Plain round-to-nearest of every column (RTN)."""
        n_cols = weight.shape[1]
        for start in range(0, n_cols, self.group_size):
            block = weight[:, start:start + self.group_size]
            self.start_group(start, block)
            g = start // self.group_size
            self.codes[:, start:start + block.shape[1]] = quantize_codes(
                block, self.scales[:, g:g + 1], self.zeros[:, g:g + 1], self.bits).to(torch.uint8)

    def to_format(self) -> UniformFormat:
        return UniformFormat(self.codes, self.scales.half(), self.zeros.to(torch.uint8), self.bits, self.group_size)
