"""The dtype that tensors left unquantized (norms, biases, float embeddings) are stored in.

They are stored in the source model's own dtype, never wider: a checkpoint of an fp16/bf16 model
must not double its unquantized bytes by writing float32. A GGUF source (and the bundled model, which
is one) is stored as fp16, and any single tensor that fp16 cannot hold (|x| > 65504) as bf16 instead.
The run rounds its in-memory model the same way before calibrating, so what it quantizes, evaluates
and writes are the same numbers; loading casts to whatever dtype the caller asks for.
"""
from __future__ import annotations

import torch

from ..models.loading import BUNDLED

FP16_MAX = torch.finfo(torch.float16).max
NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def source_dtype(model_ref: str, config) -> torch.dtype:
    """The dtype the source stores its weights in: GGUF -> fp16; else the config's (default float32)."""
    if model_ref in BUNDLED or model_ref.endswith(".gguf"):
        return torch.float16
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = NAMES.get(declared)
    return declared if declared in NAMES.values() else torch.float32


def storage_tensor(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`t` as stored: floating tensors in `dtype` (bf16 where fp16 would overflow); others unchanged."""
    if dtype is None or not t.is_floating_point() or t.dtype == dtype:
        return t
    if dtype == torch.float16 and t.numel() and bool((t.detach().abs().amax() > FP16_MAX).item()):
        return t.to(torch.bfloat16)
    return t.to(dtype)


@torch.no_grad()
def round_to_storage(model: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Round every saved floating tensor of `model` through its storage dtype (dtype kept).

    Each tensor gets new memory rather than being overwritten: transformers maps the weights file copy-on-write,
    so writing in place would turn the whole mapping into private pages that stay resident (the mapping lives as
    long as any tensor from it) beside each layer's fake-quant weights, ~2x the model in RSS. Swapping every saved
    tensor lets the mapping go.
    """
    if dtype is None:
        return
    seen = set()  # a tied tensor appears under each of its names
    for t in model.state_dict(keep_vars=True).values():  # the modules' own parameters and buffers
        if id(t) in seen or not t.is_floating_point() or t.device.type == "meta":
            continue
        seen.add(id(t))
        rounded = storage_tensor(t.detach(), dtype)
        if rounded.data_ptr() != t.data_ptr():  # else already in the storage dtype: nothing to round
            t.data = rounded.to(t.dtype)


def dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")
