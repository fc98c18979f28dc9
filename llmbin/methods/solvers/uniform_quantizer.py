"""Per-group asymmetric integer quantizer that records codes for the uniform packed format."""
from __future__ import annotations

import torch

from ...formats import UniformFormat
from .quant_grid import dequantize_codes, minmax_params, quantize_codes


class UniformColumnQuantizer:
    def __init__(self, out_features: int, in_features: int, bits: int, group_size: int):
        self.bits = bits
        self.group_size = in_features if group_size <= 0 else group_size
        ng = -(-in_features // self.group_size)
        self.codes = torch.zeros(out_features, in_features, dtype=torch.uint8)
        self.scales = torch.zeros(out_features, ng)
        self.zeros = torch.zeros(out_features, ng)

    def start_group(self, col: int, w_group: torch.Tensor) -> None:
        g = col // self.group_size
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
