"""Packed linear layers in vLLM: plain, row-parallel, and fused (q/k/v, gate/up) with one product per shard."""
from __future__ import annotations

import torch
from torch import nn
from vllm.model_executor.layers.linear import (ColumnParallelLinear, LinearMethodBase, QKVParallelLinear,
                                               RowParallelLinear)

from ...errors import LlmbinError
from .products import PackedProduct
from .shards import Shard, attach, finish

QKV_SHARDS = {"q": 0, "k": 1, "v": 2}


class LlmbinLinearMethod(LinearMethodBase):
    """The checkpoint modules `names` (one, or the parts vLLM fused into this layer, in vLLM's order)."""

    def __init__(self, names: list[str], metas: list[dict]):
        self.names, self.metas = names, metas

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs):
        fused_on_disk = len(self.names) == 1 and len(output_partition_sizes) > 1
        if not fused_on_disk and len(self.names) != len(output_partition_sizes):
            raise LlmbinError(f"vLLM's {layer.prefix} fuses {len(output_partition_sizes)} matrices, the checkpoint "
                              f"names {len(self.names)} for it ({', '.join(self.names)}); config.json is from another "
                              "model")
        if fused_on_disk and getattr(layer, "tp_size", 1) > 1:
            raise LlmbinError(f"{self.names[0]} is stored fused on disk, which llmbin cannot split over "
                              "tensor-parallel ranks; serve it with pipeline parallelism (--pipeline-parallel-size)")
        sizes = [sum(output_partition_sizes)] if fused_on_disk else output_partition_sizes
        shards = [Shard(name, meta, *_part(layer, i, name, meta, sizes[i], input_size_per_partition, input_size))
                  for i, (name, meta) in enumerate(zip(self.names, self.metas))]
        attach(layer, shards, _shard_index, device=torch.empty(0).device)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        layer.llmbin_packed = nn.ModuleList(finish(layer))
        layer.llmbin_products = [PackedProduct(m, layer.params_dtype, f"{layer.prefix} ({s.name})")
                                 for m, s in zip(layer.llmbin_packed, layer.llmbin_shards)]

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        parts = [product(x) for product in layer.llmbin_products]  # each shard its own layout, its own kernel call
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return y if bias is None else y + bias


def _shard_index(shard_id) -> int:
    """vLLM's shard id of a fused layer ("q"/"k"/"v", or the position in gate/up) -> the shard's position."""
    if shard_id is None:
        return 0
    return QKV_SHARDS[shard_id] if isinstance(shard_id, str) else int(shard_id)


def _part(layer, index: int, name: str, meta: dict, rank_rows: int, rank_cols: int, input_size: int):
    """(rows, cols) of the packed matrix this rank keeps, and a check that the layer and the matrix agree."""
    n, k = meta["out_features"], meta["in_features"]
    if k != input_size:
        raise LlmbinError(f"the checkpoint packs {name} with {k} inputs, vLLM's "
                          f"{layer.prefix} has {input_size}; config.json is from another model")
    tp_rank, tp_size = getattr(layer, "tp_rank", 0), getattr(layer, "tp_size", 1)
    if isinstance(layer, RowParallelLinear):
        return (0, n), (tp_rank * rank_cols, (tp_rank + 1) * rank_cols)
    if not isinstance(layer, ColumnParallelLinear) or tp_size == 1:
        if rank_rows != n:
            raise LlmbinError(f"the checkpoint packs {name} with {n} outputs where vLLM's {layer.prefix} has "
                              f"{rank_rows}; config.json is from another model")
        return (0, n), (0, k)
    ranks, rank = tp_size, tp_rank
    if isinstance(layer, QKVParallelLinear) and index > 0:  # k and v heads may be replicated over ranks
        ranks, rank = tp_size // layer.num_kv_head_replicas, tp_rank // layer.num_kv_head_replicas
    if rank_rows * ranks != n:
        raise LlmbinError(f"the checkpoint packs {name} with {n} outputs where vLLM's {layer.prefix} has "
                          f"{rank_rows} on each of {ranks} ranks; config.json is from another model")
    return (rank * rank_rows, (rank + 1) * rank_rows), (0, k)
