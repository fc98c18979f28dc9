"""Writing the packed checkpoint: a standard HF directory that `from_pretrained` and `llmbin.load` read.

It is assembled in the output's work area (workarea.py) and renamed into place when complete, so a crash
never leaves a directory whose config.json looks finished.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import LlmbinError
from ..methods.base import QuantResult
from ..models.walk import decoder_layers, set_submodule
from ..nn import QuantLinear
from .card import model_card
from .size import model_size, packed_modules
from .version import FORMAT_VERSION


def pack_model(model: nn.Module, results: dict[str, QuantResult]) -> None:
    """Replace each quantized linear by a QuantLinear holding its packed tensors (in place)."""
    for name, result in results.items():
        linear = model.get_submodule(name)
        bias = linear.bias.detach() if getattr(linear, "bias", None) is not None else None
        set_submodule(model, name, QuantLinear.from_format(result.format, bias))


def bits_summary(results: dict[str, QuantResult]) -> dict:
    weights = sum(r.format.out_features * r.format.in_features for r in results.values())
    if not weights:
        return {}
    stored = sum(r.format.stored_bytes() for r in results.values())
    paper = sum(r.format.paper_bits * r.format.out_features * r.format.in_features for r in results.values())
    return {"bpw_paper": round(paper / weights, 4), "bpw_all_in": round(8 * stored / weights, 4),
            "quantized_weights": int(weights), "quantized_bytes": int(stored), "quantized_fp16_bytes": int(2 * weights)}


def quantization_config(results: dict[str, QuantResult], quant_info: dict) -> dict:
    return {"quant_method": "llmbin", "format_version": FORMAT_VERSION,
            "modules": {name: r.format.meta() for name, r in sorted(results.items())},
            "bits": bits_summary(results), **quant_info}


def write_checkpoint(model, tokenizer, results: dict[str, QuantResult], work, quant_info: dict, log_jsonl: str,
                     overwrite: bool = False, rewrite_layers: bool = False) -> Path:
    """Save the layers the work area lacks (all of them with rewrite_layers), then finalize it into place.

    Afterwards the in-memory model holds QuantLinear modules, like a model loaded from the checkpoint.
    """
    prefix, layers = decoder_layers(model)
    by_layer: dict[int, dict[str, QuantResult]] = {}
    for name, result in results.items():
        index, _, local = name[len(prefix) + 1:].partition(".")
        by_layer.setdefault(int(index), {})[local] = result
    streamed = next(layers[0].parameters()).device.type == "meta"
    for i, layer in enumerate(layers):
        if rewrite_layers or i not in work.finished:
            if streamed:
                raise LlmbinError("a streamed model cannot rewrite its layers at the end; drop --set pipeline.stream=true")
            work.save_layer(i, f"{prefix}.{i}", layer, by_layer.get(i, {}))
    config = quantization_config(results, quant_info)
    card = lambda path: model_card(config, model_size(path, config))  # noqa: E731  (after the shards are written)
    out = work.finalize(model, prefix, config, tokenizer, log_jsonl, card, overwrite, set(packed_modules(config)))
    if not streamed:
        pack_model(model, results)
        model.config.quantization_config = config
    return out
