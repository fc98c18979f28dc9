"""The kernel each packed matrix runs on inside vLLM, chosen as everywhere in llmbin (kernels.select_backend: the
CPU lookup-table kernel on CPU, the Triton kernels on CUDA, the torch reference otherwise), and said once per
process for each kind of matrix, with the reason faster backends were passed over."""
from __future__ import annotations

import logging
import os

import torch

from ...kernels import select_backend
from ...nn import PackedMatrix

# a child of vLLM's logger, so the line comes out through vLLM's handler and format
log = logging.getLogger("vllm.llmbin")
_said: set[tuple] = set()
_threads_set: set[int] = set()


class PackedProduct:
    """x -> x W^T for one packed matrix, through the backend chosen for the model's activation dtype."""

    def __init__(self, module: PackedMatrix, dtype: torch.dtype, where: str):
        refused: list[str] = []
        device = next(module.buffers()).device
        self.module = module
        self.backend = select_backend(module.meta, device, dtype, refused)
        self.state = self.backend.prepare(module)
        if isinstance(self.state, torch.Tensor):  # the torch reference's dense float32 weight: cast once, not per call
            self.state = self.state.to(dtype)
        self.out_features = module.out_features
        _say_backend(module.meta, device, dtype, self.backend, refused, where)
        if self.backend.name == "cpu":
            _split_one_token_products()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend.forward(self.module, self.state, x)


def _say_backend(meta: dict, device, dtype, backend, refused: list[str], where: str) -> None:
    key = (meta["format"], str(device), dtype, backend.name)
    if key in _said:
        return
    _said.add(key)
    faster = [why for why in refused if _priority(why.partition(":")[0]) > backend.priority]
    because = f" ({'; '.join(faster)})" if faster else ""
    log.info("llmbin: %s matrices on %s %s run on the %s backend%s; first: %s", meta["format"], device,
             str(dtype).removeprefix("torch."), _label(backend.name), because, where)


def _priority(name: str) -> int:
    from ...kernels import BACKENDS

    return getattr(BACKENDS.get(name.strip()), "priority", -1)


def _label(name: str) -> str:
    return {"cpu": "cpu lookup-table", "torch": "torch reference (dequantize + F.linear)"}.get(name, name)


def _split_one_token_products() -> None:
    """One-token products (batch-1 decode) run on the caller and n - 1 spinning helper threads of the kernel's
    pool, a setting of the calling thread: vLLM loads and runs the model on one thread, so it is set here, to the
    threads vLLM bound (LLMBIN_GEMV_THREADS overrides). Products of many tokens use torch's threads as always."""
    from ...kernels.cpu import load_extension

    ext = load_extension()
    wanted = int(os.environ.get("LLMBIN_GEMV_THREADS", torch.get_num_threads()))
    if ext is None or ext.gemv_threads() == wanted:
        return
    ext.set_gemv_threads(wanted)
    if wanted not in _threads_set:
        _threads_set.add(wanted)
        log.info("llmbin: one-token products split over %d threads (torch's thread count; LLMBIN_GEMV_THREADS "
                 "sets another)", wanted)
