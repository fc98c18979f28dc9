"""vLLM plugin: serve llmbin checkpoints with `vllm serve DIR` or `vllm.LLM(DIR)`.

vLLM calls `register()` (entry point group `vllm.general_plugins`, pyproject.toml) in every process it starts,
before it reads a model's config; it makes "llmbin" a quantization method, so a checkpoint whose config.json says
`quant_method: "llmbin"` loads through `config.LlmbinConfig`. Importing this package imports nothing of vLLM:
a process that only loads the plugin list pays for vLLM's quantization modules when it registers, not before.

- config.py           the quantization config: which vLLM layer gets which packed matrices
- linear_method.py    packed linears, fused q/k/v and gate/up with one product per shard
- embedding_method.py packed token embeddings and output head, tied or not
- shards.py           one layer's packed matrices: loading them, validating them, keeping this rank's part
- split.py            the part of a packed matrix a tensor-parallel rank keeps (rows, or columns where groups allow)
- products.py         the kernel each packed matrix runs on, said once in the log
"""
from __future__ import annotations

_registered = False


def register() -> None:
    """Make "llmbin" a vLLM quantization method (idempotent: vLLM may call it more than once per process)."""
    global _registered
    if _registered:
        return
    from vllm.model_executor.layers.quantization import register_quantization_config

    from .config import LlmbinConfig

    register_quantization_config("llmbin")(LlmbinConfig)
    _registered = True
