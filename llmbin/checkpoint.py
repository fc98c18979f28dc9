"""The packed checkpoint: a standard HF directory that `from_pretrained` and `llmbin.load` read.

Written into a hidden temporary directory beside the target and renamed when complete, so a
crash never leaves a directory whose config.json looks finished.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import LlmbinError
from .integrations.hf_quantizer import FORMAT_VERSION
from .methods.base import QuantResult
from .models.walk import set_submodule
from .nn import QuantLinear


def pack_model(model: nn.Module, results: dict[str, QuantResult]) -> None:
    """Replace each quantized linear by a QuantLinear holding its packed tensors (in place)."""
    for name, result in results.items():
        linear = model.get_submodule(name)
        bias = linear.bias.detach() if getattr(linear, "bias", None) is not None else None
        set_submodule(model, name, QuantLinear.from_format(result.format, bias))


def bits_summary(model: nn.Module) -> dict:
    weights = stored_bits = paper = 0.0
    fp16_bytes = packed_bytes = 0
    for module in model.modules():
        if isinstance(module, QuantLinear):
            n = module.in_features * module.out_features
            nbytes = sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
            weights += n
            stored_bits += 8 * nbytes
            paper += module.meta["paper_bits"] * n
            fp16_bytes += 2 * n
            packed_bytes += nbytes
    if not weights:
        return {}
    return {"bpw_paper": round(paper / weights, 4), "bpw_all_in": round(stored_bits / weights, 4),
            "quantized_weights": int(weights), "quantized_bytes": int(packed_bytes), "quantized_fp16_bytes": int(fp16_bytes)}


def staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def finalize_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LlmbinError(f"{out} already exists; choose another -o or pass --overwrite")
        shutil.rmtree(out)
    os.replace(tmp, out)


def save_checkpoint(model, tokenizer, results: dict[str, QuantResult], out: str | Path, quant_info: dict,
                    log_jsonl: str, overwrite: bool = False, max_shard_size: str = "2GB") -> Path:
    """Pack `model` in place and write the directory. `quant_info` goes into quantization_config."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LlmbinError(f"{out} already exists; choose another -o or pass --overwrite")
    pack_model(model, results)
    modules = {name: r.format.meta() for name, r in sorted(results.items())}
    config = {"quant_method": "llmbin", "format_version": FORMAT_VERSION, "modules": modules,
              "bits": bits_summary(model), **quant_info}
    tmp = staging_dir(out)
    try:
        model.config.quantization_config = config
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "quant_log.jsonl").write_text(log_jsonl)
        (tmp / "README.md").write_text(model_card(config))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finalize_dir(tmp, out, overwrite)
    return out


def model_card(config: dict) -> str:
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
        f"- calibration: {prov.get('calibration')} (token hash {prov.get('calibration_token_hash')}), seed {prov.get('seed')}",
        f"- made with llmbin {prov.get('llmbin')}, torch {prov.get('torch')}, transformers {prov.get('transformers')}",
    ]
    if config.get("method_notes"):
        lines += ["", "## Method notes", "", config["method_notes"]]
    return "\n".join(lines) + "\n"


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
