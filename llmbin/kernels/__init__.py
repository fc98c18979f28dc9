"""Kernel backends computing a packed matrix's product (nn/packed.py), and the selector that picks one.

A backend is an object with
    name: str
    priority: int                      # higher wins among the valid ones
    supports(meta, device, dtype) -> str | None   # None when it can run, else the reason it cannot
    prepare(module) -> state           # repack the module's semantic layout for this backend (cached)
    forward(module, state, x) -> y     # x [..., K] -> y [..., N], bias not included
Backends register in BACKENDS; `LLMBIN_BACKEND=torch|cpu|triton` forces one.
"""
from __future__ import annotations

import os

import torch

from ..errors import LlmbinError
from .torch_backend import TorchBackend

BACKENDS: dict[str, object] = {}


def register_backend(backend) -> None:
    BACKENDS[backend.name] = backend


register_backend(TorchBackend())


def load_optional_backends() -> None:
    """Optional backends import lazily so `import llmbin` never pulls triton or builds C++."""
    for module in ("llmbin.kernels.cpu", "llmbin.kernels.triton"):
        try:
            __import__(module)
        except ImportError:
            pass


def select_backend(meta: dict, device: torch.device, dtype: torch.dtype, explain: list | None = None):
    """The valid backend of highest priority; `explain` (a list) receives "name: why not" for each refused one."""
    load_optional_backends()
    forced = os.environ.get("LLMBIN_BACKEND")
    if forced:
        if forced not in BACKENDS:
            raise LlmbinError(f"LLMBIN_BACKEND={forced} is not a known backend; choose one of {', '.join(sorted(BACKENDS))}")
        backend = BACKENDS[forced]
        why = backend.supports(meta, device, dtype)
        if why:
            raise LlmbinError(f"LLMBIN_BACKEND={forced} cannot run {meta['format']} on {device} {dtype}: {why}")
        return backend
    valid = []
    for backend in BACKENDS.values():
        why = backend.supports(meta, device, dtype)
        if why is None:
            valid.append(backend)
        elif explain is not None:
            explain.append(f"{backend.name}: {why}")
    return max(valid, key=lambda b: b.priority)
