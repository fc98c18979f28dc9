"""The "llmbin" quantization config vLLM builds from a checkpoint's config.json, and which layer gets which method.

`from_config` receives config.json's `quantization_config` and checks it as every llmbin reader does (format
version, every module's metadata), so a corrupted checkpoint stops with one line before vLLM allocates anything.
Linear layers named in `modules` get packed matrices (vLLM's fused layers: the parts the model's
`packed_modules_mapping` lists), the others stay float; the token embedding and head follow `embeddings`.
"""
from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import (ParallelLMHead, UnquantizedEmbeddingMethod,
                                                                 VocabParallelEmbedding)

from ...checkpoint.validation import check_quant_config
from ...errors import LlmbinError
from .embedding_method import INPUT, OUTPUT, TIED, LlmbinEmbeddingMethod
from .linear_method import LlmbinLinearMethod


class LlmbinConfig(QuantizationConfig):
    def __init__(self, quantization_config: dict[str, Any]):
        super().__init__()
        check_quant_config(quantization_config)
        self.modules: dict[str, dict] = dict(quantization_config["modules"])
        self.embeddings: dict = quantization_config.get("embeddings") or {}

    def get_name(self) -> str:
        return "llmbin"

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 60  # the torch reference runs anywhere; the Triton kernels say for themselves when they cannot

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # everything is in config.json's quantization_config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LlmbinConfig":
        return cls(config)

    def apply_vllm_mapper(self, hf_to_vllm_mapper) -> None:
        """Models whose vLLM module names differ from transformers' rename them here (fusions come later)."""
        self.modules = hf_to_vllm_mapper.apply_dict(self.modules)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if isinstance(layer, LinearBase):
            return self._linear_method(prefix)
        if isinstance(layer, ParallelLMHead):
            return self._embedding_method("output", UnquantizedEmbeddingMethod)
        if isinstance(layer, VocabParallelEmbedding):
            return self._embedding_method("input", UnquantizedEmbeddingMethod)
        return None  # attention and the rest: nothing packed

    def _linear_method(self, prefix: str):
        names = self._checkpoint_names(prefix)
        metas = [self.modules.get(name) for name in names]
        if all(meta is None for meta in metas):
            return UnquantizedLinearMethod()
        if any(meta is None for meta in metas):
            packed = [n for n, m in zip(names, metas) if m is not None]
            raise LlmbinError(f"vLLM fuses {', '.join(names)} into {prefix}, but the checkpoint packs only "
                              f"{', '.join(packed)}; quantize all of them or none (pipeline.skip)")
        return LlmbinLinearMethod(names, metas)

    def _checkpoint_names(self, prefix: str) -> list[str]:
        """The checkpoint modules behind a vLLM layer: itself, or the parts of a fused layer in vLLM's order."""
        if prefix in self.modules:
            return [prefix]
        parent, _, last = prefix.rpartition(".")
        parts = self.packed_modules_mapping.get(last)
        return [f"{parent}.{part}" if parent else part for part in parts] if parts else [prefix]

    def _embedding_method(self, role: str, unquantized):
        entry = self.embeddings.get(role)
        if not entry:
            return unquantized()
        if "tied_to" in entry:
            return LlmbinEmbeddingMethod(entry["module"], None, TIED)
        return LlmbinEmbeddingMethod(entry["module"], entry["meta"], INPUT if role == "input" else OUTPUT)
