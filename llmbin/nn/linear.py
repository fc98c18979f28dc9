"""QuantLinear: a drop-in nn.Linear whose weight is a packed matrix."""
from __future__ import annotations

import torch
from torch import nn

from ..formats import PackedFormat
from .packed import PackedMatrix


class QuantLinear(PackedMatrix):
    def __init__(self, meta: dict, bias: bool = False, bias_dtype: torch.dtype = torch.float32, device=None):
        super().__init__(meta, device)
        self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_format(cls, fmt: PackedFormat, bias: torch.Tensor | None = None) -> "QuantLinear":
        module = cls(fmt.meta(), bias is not None, bias.dtype if bias is not None else torch.float32)
        module.load_format(fmt)
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.meta['format']}, "
                f"paper_bits={self.meta.get('paper_bits')}")
