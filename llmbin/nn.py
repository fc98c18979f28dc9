"""QuantLinear: a linear layer that holds packed buffers and computes through a kernel backend."""
from __future__ import annotations

import torch
from torch import nn

from .formats import PackedFormat, format_from_meta


class QuantLinear(nn.Module):
    """Drop-in for nn.Linear. Buffers are exactly the format's on-disk tensors (KERNELS.md)."""

    def __init__(self, meta: dict, bias: bool = False, bias_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.meta = dict(meta)
        self.format_cls = format_from_meta(meta)
        self.in_features, self.out_features = meta["in_features"], meta["out_features"]
        for name, (dtype, shape) in self.format_cls.expected_tensors(meta).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=bias_dtype, device=device),
                                 requires_grad=False) if bias else None
        self._prepared: dict = {}
        self._register_load_state_dict_pre_hook(lambda *a, **k: self._prepared.clear())

    @classmethod
    def from_format(cls, fmt: PackedFormat, bias: torch.Tensor | None = None) -> "QuantLinear":
        module = cls(fmt.meta(), bias is not None, bias.dtype if bias is not None else torch.float32)
        for name, tensor in fmt.tensors().items():
            getattr(module, name).copy_(tensor)
        if bias is not None:
            module.bias.data.copy_(bias.detach())
        return module

    def packed_format(self) -> PackedFormat:
        tensors = {name: buf.cpu() for name, buf in self.named_buffers(recurse=False)}
        return self.format_cls.from_tensors(self.meta, tensors)

    def backend(self, dtype: torch.dtype | None = None):
        from .kernels import select_backend

        return select_backend(self.meta, self._device(), dtype or torch.float32)

    def _device(self) -> torch.device:
        return next(self.buffers()).device

    def _apply(self, fn, recurse=True):
        self._prepared.clear()  # moved or cast: repack for the new device
        return super()._apply(fn, recurse)

    def prepare(self, dtype: torch.dtype = torch.float32):
        """Pick the backend for activations of `dtype` and repack for it (else done by the first forward)."""
        key = (self._device(), dtype)
        if key not in self._prepared:
            backend = self.backend(dtype)
            self._prepared[key] = (backend, backend.prepare(self))
        return self._prepared[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        backend, state = self._prepared[key] if key in self._prepared else self.prepare(x.dtype)
        y = backend.forward(self, state, x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.meta['format']}, "
                f"paper_bits={self.meta.get('paper_bits')}")
