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

from ..errors import LlmbinError, warn_once
from .torch_backend import TorchBackend

BACKENDS: dict[str, object] = {}


def register_backend(backend) -> None:
    BACKENDS[backend.name] = backend


register_backend(TorchBackend())


def load_optional_backends() -> None:
    """Optional backends import lazily so `import llmbin` never pulls triton or builds C++. Triton itself missing is
    the expected state of a CPU install (select_backend says so where it matters); anything else is a broken
    backend and is said once."""
    for module, optional_dependency in (("llmbin.kernels.cpu", None), ("llmbin.kernels.triton", "triton")):
        try:
            __import__(module)
        except ImportError as exc:
            if optional_dependency and getattr(exc, "name", None) == optional_dependency:
                continue
            warn_once(f"the {module.rsplit('.', 1)[1]} kernel backend could not be imported ({type(exc).__name__}: "
                      f"{exc}); its layers run on the torch reference backend. Reinstall llmbin to fix it")


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
    valid, refused = [], []
    for backend in BACKENDS.values():
        why = backend.supports(meta, device, dtype)
        if why is None:
            valid.append(backend)
        else:
            refused.append(f"{backend.name}: {why}")
    if explain is not None:
        explain.extend(refused)
    chosen = max(valid, key=lambda b: b.priority)
    if chosen.name == "torch":
        device = torch.device(device)
        why = "; ".join(refused) or (
            "no packed kernel is installed for it (pip install triton for the GPU kernels)" if device.type == "cuda"
            else "no packed kernel serves it")
        warn_once(f"{meta.get('format')} layers on {device.type} ({str(dtype).removeprefix('torch.')}) run on the torch "
                  f"reference backend, which holds each weight as a dense float copy ({why})")
    return chosen
