"""One vLLM layer's packed matrices: receiving them from vLLM's loader, validating them, keeping this rank's part.

A vLLM layer may fuse several checkpoint modules (q/k/v into qkv_proj, gate/up into gate_up_proj) whose packed
layouts differ (salient count, permutation, sparse rows, even format), so each one stays its own matrix (a
"shard") with its own product. vLLM's loader looks a tensor up by layer and tensor name (`qkv_proj.planes`) and
calls that parameter's `weight_loader(param, tensor, shard_id)`; the layer therefore owns one empty "router"
parameter per tensor name, whose loader files the tensor under its shard. Once every tensor is in, `finish`
checks the set (missing, misshapen, out-of-range values: one line naming the tensor), cuts out this rank's rows
or columns (split.py) and builds the modules the products run on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import LlmbinError
from ...formats import checked_format
from ...formats.base import check_tensors
from ...nn import PackedMatrix, QuantEmbedding
from .split import column_split_problem, take_columns, take_rows


@dataclass
class Shard:
    name: str  # the checkpoint's module name
    meta: dict  # its format metadata (the whole matrix)
    rows: tuple[int, int]  # the output rows this rank keeps
    cols: tuple[int, int]  # the input columns this rank keeps
    loaded: dict[str, torch.Tensor] = field(default_factory=dict)

    def check_split(self, layer_name: str) -> None:
        if self.rows[1] > self.meta["out_features"] or self.cols[1] > self.meta["in_features"]:
            raise LlmbinError(f"{self.name} is packed as [{self.meta['out_features']}, {self.meta['in_features']}], "
                              f"but vLLM's {layer_name} asks for rows {self.rows[0]}..{self.rows[1]} and columns "
                              f"{self.cols[0]}..{self.cols[1]} of it; config.json is from another model")
        problem = column_split_problem(self.meta, *self.cols)
        if problem:
            raise LlmbinError(f"{self.name} cannot be split over tensor-parallel ranks: {problem}; serve this "
                              "checkpoint with pipeline parallelism (--pipeline-parallel-size) instead")


def attach(layer: nn.Module, shards: list[Shard], shard_index, device=None) -> None:
    """Give `layer` the shards and one router parameter per tensor name any of them stores."""
    for shard in shards:
        checked_format(shard.meta, shard.name)
        shard.check_split(getattr(layer, "prefix", "") or type(layer).__name__)
    layer.llmbin_shards = shards
    layer.llmbin_routers = []
    dtypes: dict[str, torch.dtype] = {}
    for shard in shards:
        for name, (dtype, _) in checked_format(shard.meta).expected_tensors(shard.meta).items():
            dtypes.setdefault(name, dtype)
    for name, dtype in dtypes.items():
        router = nn.Parameter(torch.empty(0, dtype=dtype, device=device), requires_grad=False)
        router.weight_loader = _router(layer, name, shard_index)
        layer.register_parameter(name, router)
        layer.llmbin_routers.append(name)


def _router(layer: nn.Module, tensor_name: str, shard_index):
    def weight_loader(param, loaded: torch.Tensor, shard_id=None) -> None:
        shard = layer.llmbin_shards[shard_index(shard_id)]
        expected = checked_format(shard.meta).expected_tensors(shard.meta).get(tensor_name)
        key = f"{shard.name}.{tensor_name}"
        if expected is None:
            raise LlmbinError(f"unexpected tensor {key} in the checkpoint for packed module {shard.name}")
        dtype, shape = expected
        if loaded.dtype != dtype or tuple(loaded.shape) != tuple(shape):
            raise LlmbinError(f"packed tensor {key} is {str(loaded.dtype).removeprefix('torch.')} "
                              f"{tuple(loaded.shape)}, the format needs {str(dtype).removeprefix('torch.')} "
                              f"{tuple(shape)}; the checkpoint is corrupted")
        shard.loaded[tensor_name] = loaded.to(param.device, copy=True)
    return weight_loader


def finish(layer: nn.Module, embedding: bool = False, out_dtype: torch.dtype = torch.float32) -> list[PackedMatrix]:
    """After loading: every shard complete and valid, cut to this rank, as the modules its products run on."""
    modules = []
    for shard in layer.llmbin_shards:
        cls = checked_format(shard.meta, shard.name)
        missing = sorted(set(cls.expected_tensors(shard.meta)) - set(shard.loaded))
        if missing:
            raise LlmbinError(f"checkpoint is missing packed tensor {shard.name}.{missing[0]}; the files are "
                              "incomplete, re-export them")
        check_tensors(cls, shard.meta, {n: t.cpu() for n, t in shard.loaded.items()}, shard.name)
        meta, tensors = take_rows(shard.meta, shard.loaded, *shard.rows)
        meta, tensors = take_columns(meta, tensors, *shard.cols)
        device = next(iter(tensors.values())).device
        module = (QuantEmbedding(meta, out_dtype=out_dtype, device=device) if embedding
                  else PackedMatrix(meta, device=device))
        for name, tensor in tensors.items():
            getattr(module, name).copy_(tensor)
        shard.loaded.clear()  # the module holds them now
        modules.append(module)
    for name in layer.llmbin_routers:  # they have done their work
        delattr(layer, name)
    layer.llmbin_routers = []
    return modules
