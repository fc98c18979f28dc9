"""Packed token embeddings and output head in vLLM (VocabParallelEmbedding / ParallelLMHead).

The checkpoint stores them in the `uniform` integer layout (checkpoint/embeddings.py). A lookup unpacks only the
gathered rows; the head is a packed product. A tied head owns nothing: `tie_weights` points it at the embedding,
whose packed matrix then serves both (vLLM's default tie would look for a float `weight` that does not exist).
With tensor parallelism every rank keeps its slice of the vocabulary, as vLLM's float embedding does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

from ...errors import LlmbinError
from .products import PackedProduct
from .shards import Shard, attach, finish

INPUT, OUTPUT, TIED = "input", "output", "tied"


class LlmbinEmbeddingMethod(QuantizeMethodBase):
    def __init__(self, name: str, meta: dict | None, role: str):
        self.name, self.meta, self.role = name, meta, role

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype, **extra_weight_attrs):
        if self.role == TIED:
            return  # tie_weights gives it the embedding's matrix
        vocab, dim = self.meta["out_features"], self.meta["in_features"]
        if (vocab, dim) != (layer.org_vocab_size, layer.embedding_dim):
            raise LlmbinError(f"the checkpoint packs {self.name} as [{vocab}, {dim}], vLLM's model has "
                              f"[{layer.org_vocab_size}, {layer.embedding_dim}]; config.json is from another model")
        rows = (layer.shard_indices.org_vocab_start_index, layer.shard_indices.org_vocab_end_index)
        attach(layer, [Shard(self.name, self.meta, rows, (0, dim))], lambda shard_id: 0, device=torch.empty(0).device)

    def tie_weights(self, layer: nn.Module, embed_tokens: nn.Module):
        method = getattr(embed_tokens, "quant_method", None)
        if self.role != TIED or not isinstance(method, LlmbinEmbeddingMethod) or method.role != INPUT:
            raise LlmbinError(f"vLLM ties {layer.prefix or 'the head'} to the input embedding, but the checkpoint "
                              "does not store them as one packed matrix; config.json's tie_word_embeddings "
                              "disagrees with its quantization_config.embeddings")
        layer.llmbin_tied_to = [embed_tokens]  # a list, so the embedding is not registered twice
        embed_tokens.llmbin_feeds_head = True
        return layer

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if self.role == TIED:
            if not hasattr(layer, "llmbin_tied_to"):
                raise LlmbinError(f"the checkpoint ties {self.name} to the input embedding, but vLLM's model never "
                                  "tied them; set tie_word_embeddings true in config.json")
            return
        layer.llmbin_packed = nn.ModuleList(finish(layer, embedding=self.role == INPUT, out_dtype=layer.params_dtype))
        layer.llmbin_products = []
        if self.role == OUTPUT or getattr(layer, "llmbin_feeds_head", False):
            layer.llmbin_products = [PackedProduct(layer.llmbin_packed[0], layer.params_dtype, f"{self.name} (head)")]

    def embedding(self, layer: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return layer.llmbin_packed[0](ids)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        owner = layer.llmbin_tied_to[0] if self.role == TIED else layer
        logits = owner.llmbin_products[0](x)
        padding = layer.num_embeddings_per_partition - logits.shape[-1]  # vLLM's vocabulary is padded to 64
        if padding:
            logits = F.pad(logits, (0, padding))
        return logits if bias is None else logits + bias
