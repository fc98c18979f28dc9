"""Reference backend: dequantize once per device/dtype and call F.linear.

Always valid and the correctness oracle for the other backends. It holds a dense copy of the
weight while in use, so it gives exact results but no memory saving.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class TorchBackend:
    name = "torch"
    priority = 0

    def supports(self, meta: dict, device: torch.device, dtype: torch.dtype) -> str | None:
        return None

    def prepare(self, module):
        return module.packed_format().dequantize(torch.float32)

    def forward(self, module, state, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, state.to(device=x.device, dtype=x.dtype))
