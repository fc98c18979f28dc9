"""The packed checkpoint: writing it (work area, writer, card), reading and validating it, its size and its report.

A checkpoint is a standard Hugging Face directory: sharded safetensors whose quantized modules hold their
packed format's tensors, and a config.json whose `quantization_config` lists every packed module's format.
"""
from .reader import is_llmbin_checkpoint, load_any, load_checkpoint, read_quant_config, shard_files
from .version import FORMAT_VERSION, READABLE_VERSIONS

__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "is_llmbin_checkpoint", "load_any", "load_checkpoint",
           "read_quant_config", "shard_files"]
