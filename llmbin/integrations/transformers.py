"""transformers integration: `AutoModelForCausalLM.from_pretrained(dir)` of an llmbin checkpoint.

The config's `quantization_config` (quant_method "llmbin") lists every packed module with its
format meta. Before weights load, those modules become QuantLinear with buffers of the declared
shapes, and the safetensors headers are checked against them, so a missing, unexpected or
wrongly shaped packed tensor stops loading with its name.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..checkpoint.embeddings import install_packed_embeddings, packed_embedding_modules
from ..checkpoint.validation import (check_loaded_values, check_quant_config, check_shard_name, existing_module,
                                   validate_checkpoint_files)
from ..checkpoint.version import FORMAT_VERSION
from ..errors import LlmbinError, warn_once
from ..formats import checked_format
from ..models.walk import decoder_layers, make_linears_explicit, set_submodule
from ..nn import PackedMatrix, QuantLinear, untie_packed
from ..nn.fused_layers import use_fused_layers
from ..nn.grouped_attention import use_grouped_attention


@register_quantization_config("llmbin")
class LlmbinConfig(QuantizationConfigMixin):
    def __init__(self, modules: dict | None = None, format_version: int = FORMAT_VERSION, **kwargs):
        self.quant_method = "llmbin"
        self.format_version = format_version
        self.modules = modules or {}
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


@register_quantizer("llmbin")
class LlmbinHfQuantizer(HfQuantizer):
    requires_calibration = True  # llmbin checkpoints are made by `llmbin quantize`, not on the fly

    def validate_environment(self, *args, **kwargs):
        check_quant_config(self.quantization_config.to_dict())  # version, every module's metadata

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        record = getattr(self.quantization_config, "embeddings", None)
        convert_to_quant_linears(model, self.quantization_config.modules)
        install_packed_embeddings(model, record)
        if checkpoint_files:
            for file in checkpoint_files:
                check_shard_name(Path(file).name, Path(file).parent / "model.safetensors.index.json")
            validate_checkpoint_files(model, checkpoint_files,
                                      {**self.quantization_config.modules, **packed_embedding_modules(record)})
        else:
            warn_once("transformers named no checkpoint files, so their tensor headers are not checked before "
                      "loading (values still are, after it); load with llmbin.load(path) for the full check")

    def _process_model_after_weight_loading(self, model, **kwargs):
        check_loaded_values(model)  # every index a kernel reads, before the first product
        for module in model.modules():  # which kernel will run each one: a fallback is said now, at load
            if isinstance(module, PackedMatrix):
                module.backend()
        record = getattr(self.quantization_config, "embeddings", None)
        if record and record.get("tied") and record.get("input"):
            # the packed matrix is shared by reference: a later tie_weights() (lm-eval calls one) must not look
            # for the float `weight` parameters that no longer exist
            untie_packed(model)
        use_grouped_attention(model)  # SDPA's maths, faster on CPU (nn/grouped_attention.py)
        use_fused_layers(model)  # norms, SiLU * up and rotary in one pass each on CPU (nn/fused_layers.py)
        return model

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def convert_to_quant_linears(model, modules: dict) -> None:
    """Give the model the module structure of the checkpoint: explicit linears, then QuantLinear where packed."""
    _, layers = decoder_layers(model)
    for layer in layers:
        make_linears_explicit(layer)
    for name, meta in modules.items():
        checked_format(meta, name)  # unknown format, version or malformed metadata: a clear error before allocating
        old = existing_module(model, name)
        if not isinstance(old, torch.nn.Linear) or (old.out_features, old.in_features) != (meta["out_features"],
                                                                                            meta["in_features"]):
            shape = (f"[{old.out_features}, {old.in_features}]" if isinstance(old, torch.nn.Linear)
                     else f"a {type(old).__name__}")
            raise LlmbinError(f"checkpoint declares {name} as a packed [{meta['out_features']}, {meta['in_features']}] "
                              f"linear, but in this model ({type(model).__name__}) it is {shape}; config.json is "
                              "corrupted or from another model")
        bias = getattr(old, "bias", None)
        dtype = bias.dtype if bias is not None else torch.float32
        # on the skeleton's device: transformers builds it on "meta" and assigns the checkpoint's tensors, so buffers
        # allocated on the CPU here were zero-filled copies of the whole checkpoint that only raised the peak
        set_submodule(model, name, QuantLinear(meta, bias is not None, dtype, device=old.weight.device))
    # Every tensor of the decoder layers comes from the checkpoint (validated before loading), so
    # transformers' random re-initialisation of "missing" weights must not touch them (QuantLinear has no .weight).
    for module in layers.modules():
        module._is_hf_initialized = True
