"""A quantized linear whose continuous tensors train while its codes stay frozen.

Each float tensor T0 of the packed format (`PackedFormat.float_fields`) becomes
    T = T0 * (1 + d)         for a "scale" (relative change: one learning rate fits every layer, signs kept)
    T = T0 + d * mean|T0|    for a "shift" (offsets may be 0 or change sign; stepped in the tensor's own units)
with d an fp32 parameter starting at 0. The forward dequantizes the format with those tensors
(a differentiable function of them) and applies it as a dense linear: y = x W(T)^T + b.
`rounded_format()` gives the packed format with T rounded to float16 (the stored precision), and
`load_rounded()` resets T0 to those rounded values with d = 0, so the module then computes exactly
what the packed checkpoint holds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import PackedFormat


class TrainableQuantLinear(nn.Module):
    def __init__(self, fmt: PackedFormat, bias: torch.Tensor | None, device="cpu"):
        super().__init__()
        self.kinds = {n: fmt.float_fields[n] for n in fmt.floats()}
        self.stored_dtypes = {n: t.dtype for n, t in fmt.floats().items()}
        self.frozen = _format_to(fmt, device)  # codes, planes, masks, zero points: never change
        self.deltas = nn.ParameterDict()
        for name, tensor in fmt.floats().items():
            self.register_buffer(f"base_{name}", tensor.detach().float().to(device))
            self.deltas[name] = nn.Parameter(torch.zeros(tensor.shape, device=device))
        self.register_buffer("bias", None if bias is None else bias.detach().float().to(device))
        self.in_features, self.out_features = fmt.in_features, fmt.out_features

    def base(self, name: str) -> torch.Tensor:
        return getattr(self, f"base_{name}")

    def floats(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, kind in self.kinds.items():
            base, d = self.base(name), self.deltas[name]
            if kind == "scale":
                out[name] = base * (1 + d)
            else:
                out[name] = base + d * base.abs().mean().clamp(min=1e-8)
        return out

    def weight(self) -> torch.Tensor:
        return self.frozen.with_floats(**self.floats()).dequantize(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def rounded_floats(self) -> dict[str, torch.Tensor]:
        """The trained tensors in their stored dtype (float16), on the CPU; non-finite values keep the original."""
        out = {}
        for name, value in self.floats().items():
            stored = value.to(self.stored_dtypes[name])
            original = self.base(name).to(self.stored_dtypes[name])
            out[name] = torch.where(torch.isfinite(stored), stored, original).cpu()
        return out

    def rounded_format(self, source: PackedFormat) -> PackedFormat:
        """`source` (the CPU format this module was built from) with the rounded trained tensors."""
        return source.with_floats(**self.rounded_floats())

    @torch.no_grad()
    def load_rounded(self, floats: dict[str, torch.Tensor]) -> None:
        for name, value in floats.items():
            self.base(name).copy_(value.float())
            self.deltas[name].zero_()


def _format_to(fmt: PackedFormat, device) -> PackedFormat:
    """A copy of the format with every tensor field on `device` (nested dataclasses such as sparse parts too)."""
    import dataclasses

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(value, **{f.name: move(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return value

    return move(fmt)
