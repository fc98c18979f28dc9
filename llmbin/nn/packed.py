"""PackedMatrix: a module holding one packed [out, in] matrix as its format's on-disk tensors, multiplied through
a kernel backend. QuantLinear (a linear layer) and QuantEmbedding (a token table that can also act as the output
head) are the two things built on it."""
from __future__ import annotations

import torch
from torch import nn

from ..formats import PackedFormat, format_from_meta
from ..host.memory import release_freed_memory, release_mapped_pages
from ..kernels import select_backend


# A repack's temporaries are a few times its layer and go back to the heap, where the next layer's reuse them; the
# heap is handed back to the system (malloc_trim: ~9 ms a call, once per layer 1.9 s of SmolLM2's first forward)
# after every 4 MB of layers repacked, so it never holds more than a few times that in freed temporaries (a GPTQ-4
# SmolLM2 adds 1.64x its file when loaded, 3.28x when only layers of 4 MB and more trimmed).
_TRIM_AFTER_BYTES = 4 << 20
_untrimmed = [0]  # bytes of layers repacked since the last trim


def _repacked(nbytes: int) -> None:
    _untrimmed[0] += nbytes
    if _untrimmed[0] >= _TRIM_AFTER_BYTES:
        release_freed_memory()  # the repacks' temporaries (a head's codes as int32: ~4x its plan)
        _untrimmed[0] = 0


class PackedMatrix(nn.Module):
    """Buffers are exactly the format's on-disk tensors (KERNELS.md); `matmul(x)` = x W^T through a backend."""

    def __init__(self, meta: dict, device=None):
        super().__init__()
        self.meta = dict(meta)
        self.format_cls = format_from_meta(meta)
        self.in_features, self.out_features = meta["in_features"], meta["out_features"]
        for name, (dtype, shape) in self.format_cls.expected_tensors(meta).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype, device=device))
        self._prepared: dict = {}
        self._register_load_state_dict_pre_hook(lambda *a, **k: self._prepared.clear())

    def load_format(self, fmt: PackedFormat) -> None:
        for name, tensor in fmt.tensors().items():
            getattr(self, name).copy_(tensor)

    def packed_format(self) -> PackedFormat:
        tensors = {name: buf.cpu() for name, buf in self.named_buffers(recurse=False)}
        return self.format_cls.from_tensors(self.meta, tensors)

    def backend(self, dtype: torch.dtype | None = None):
        return select_backend(self.meta, self._device(), dtype or torch.float32)

    def _device(self) -> torch.device:
        return next(self.buffers()).device

    def _apply(self, fn, recurse=True):
        self._prepared.clear()  # moved or cast: repack for the new device
        return super()._apply(fn, recurse)

    def prepare(self, dtype: torch.dtype = torch.float32):
        """Pick the backend for activations of `dtype` and repack for it (else done by the first product)."""
        key = (self._device(), dtype)
        if key not in self._prepared:
            backend = self.backend(dtype)
            self._prepared[key] = (backend, backend.prepare(self))
            if getattr(backend, "owns_weights", False):  # its plan holds the weights: the mapped shard pages can go,
                release_mapped_pages(self.buffers(recurse=False))
                _repacked(sum(b.nbytes for b in self.buffers(recurse=False)))
        return self._prepared[key]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> x W^T [..., out] in x's dtype."""
        key = (x.device, x.dtype)
        backend, state = self._prepared[key] if key in self._prepared else self.prepare(x.dtype)
        return backend.forward(self, state, x)
