"""The packed checkpoint: a standard HF directory that `from_pretrained` and `llmbin.load` read.

It is assembled in the output's work area (llmbin/workarea.py) and renamed into place when
complete, so a crash never leaves a directory whose config.json looks finished.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import LlmbinError
from .integrations.hf_quantizer import FORMAT_VERSION
from .methods.base import QuantResult
from .models.walk import decoder_layers, set_submodule
from .nn import QuantLinear


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
    from .model_size import model_size, packed_modules

    card = lambda path: model_card(config, model_size(path, config))  # noqa: E731  (after the shards are written)
    out = work.finalize(model, prefix, config, tokenizer, log_jsonl, card, overwrite, set(packed_modules(config)))
    if not streamed:
        pack_model(model, results)
        model.config.quantization_config = config
    return out


def model_card(config: dict, size: dict | None = None) -> str:
    from .model_size import describe

    recipe = config.get("recipe", {})
    prov = config.get("provenance", {})
    bits = config.get("bits", {})
    lines = [
        f"# {prov.get('model', 'model')} quantized with llmbin ({recipe.get('method', '?')})", "",
        "Packed 1-2 bit checkpoint made by [llmbin](https://pypi.org/project/llmbin/). Load it with",
        "", "```python", "import llmbin, transformers",
        "model = transformers.AutoModelForCausalLM.from_pretrained('<this directory>')", "```", "",
        f"- method: `{recipe.get('method')}` with parameters `{json.dumps(recipe.get('params', {}))}`",
        f"- bits per weight of the quantized linears: {bits.get('bpw_paper')} (paper convention), "
        f"{bits.get('bpw_all_in')} (all-in, every stored bit)",
        *([f"- whole model: {describe(size)}"] if size else []),
        f"- token embeddings / output head: {_embedding_line(config.get('embeddings'))}; other unquantized "
        f"tensors stored as {config.get('storage_dtype') or 'the model dtype'}",
        f"- calibration: {prov.get('calibration')} (token hash {prov.get('calibration_token_hash')}), seed {prov.get('seed')}",
        f"- made with llmbin {prov.get('llmbin')}, torch {prov.get('torch')}, transformers {prov.get('transformers')}",
    ]
    if config.get("method_notes"):
        lines += ["", "## Method notes", "", config["method_notes"]]
    return "\n".join(lines) + "\n"


def _embedding_line(record: dict | None) -> str:
    if not record or not (record.get("input") or record.get("output")):
        return "not quantized"
    parts = []
    for role in ("input", "output"):
        entry = record.get(role)
        if entry is None:
            parts.append(f"{role} not quantized")
        elif "tied_to" in entry:
            parts.append(f"{role} tied to {entry['tied_to']}")
        else:
            meta = entry["meta"]
            group = "per row" if meta["group_size"] >= meta["in_features"] else f"groups of {meta['group_size']}"
            parts.append(f"{role} int{meta['bits']} ({group})")
    return ", ".join(parts)


def read_quant_config(path: str | Path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise LlmbinError(f"{path} is not a model directory (no config.json)")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise LlmbinError(f"{cfg_file} is not valid JSON ({exc.msg} at line {exc.lineno}); the checkpoint is corrupted") from None
    qc = config.get("quantization_config")
    if not qc or qc.get("quant_method") != "llmbin":
        raise LlmbinError(f"{path} is not an llmbin checkpoint (no llmbin quantization_config in config.json)")
    return qc


def shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError):
            raise LlmbinError(f"{index} is corrupted; re-export the checkpoint") from None
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise LlmbinError(f"{path} is missing shard(s) {', '.join(missing)}; re-copy the checkpoint")
        return [path / n for n in names]
    single = path / "model.safetensors"
    if not single.exists():
        raise LlmbinError(f"{path} has no model.safetensors (only safetensors weights are read)")
    return [single]


def load_checkpoint(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """-> (model, tokenizer). Validates every shard before transformers loads anything."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoint_validation import read_headers

    path = Path(path)
    read_quant_config(path)
    read_headers(shard_files(path))  # truncated/corrupted shards -> one clear line
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True)
    model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").exists() else None
    return model.eval(), tokenizer
