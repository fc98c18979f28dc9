"""Reading a packed checkpoint: its quantization config, its shards, and the model (validated before it loads).

Loading goes through transformers' from_pretrained with llmbin's quantizer, which `import llmbin` registers
(integrations/transformers.py); every llmbin module imports the package first, so it is always registered here.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import LlmbinError
from ..models.loading import load_model
from .validation import check_quant_config, check_shard_name, read_headers


def _config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise LlmbinError(f"{path} is not a model directory (no config.json)")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise LlmbinError(f"{cfg_file} is not valid JSON ({exc.msg} at line {exc.lineno}); the checkpoint is corrupted") from None
    except UnicodeDecodeError:
        raise LlmbinError(f"{cfg_file} is not UTF-8 text; the checkpoint is corrupted") from None
    if not isinstance(config, dict):
        raise LlmbinError(f"{cfg_file} is not a JSON object; the checkpoint is corrupted")
    return config


def _llmbin_section(config: dict) -> dict | None:
    qc = config.get("quantization_config")
    return qc if isinstance(qc, dict) and qc.get("quant_method") == "llmbin" else None


def is_llmbin_checkpoint(path: str | Path) -> bool:
    """Whether `path`'s config.json declares an llmbin quantization config (unreadable config: LlmbinError)."""
    return _llmbin_section(_config(Path(path))) is not None


def read_quant_config(path: str | Path) -> dict:
    path = Path(path)
    qc = _llmbin_section(_config(path))
    if qc is None:
        raise LlmbinError(f"{path} is not an llmbin checkpoint (no llmbin quantization_config in config.json)")
    check_quant_config(qc, str(path / "config.json"))
    return qc


def shard_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise LlmbinError(f"{index} is corrupted; re-export the checkpoint") from None
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
            raise LlmbinError(f"{index}: weight_map is not a mapping of tensor names to shards; re-export the checkpoint")
        names = sorted({check_shard_name(name, index) for name in weight_map.values()})
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise LlmbinError(f"{path} is missing shard(s) {', '.join(missing)}; re-copy the checkpoint")
        return [path / n for n in names]
    single = path / "model.safetensors"
    if not single.exists():
        raise LlmbinError(f"{path} has no model.safetensors (only safetensors weights are read)")
    return [single]


def load_checkpoint(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """-> (model, tokenizer). Validates every shard before transformers loads anything, and every value a kernel
    will index with before the first product (integrations/transformers.py)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    read_quant_config(path)
    read_headers(shard_files(path))  # truncated/corrupted shards -> one clear line
    with _as_checkpoint_error(path, "config.json or the weights"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, use_safetensors=True)
    model.to(device)
    tokenizer = None
    if (path / "tokenizer_config.json").exists():
        with _as_checkpoint_error(path, "the tokenizer files"):
            tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


@contextmanager
def _as_checkpoint_error(path: Path, what: str):
    """transformers' own failures on a damaged checkpoint (whatever their type) as one line naming the checkpoint."""
    try:
        yield
    except LlmbinError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OSError, UnicodeDecodeError,
            OverflowError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise LlmbinError(f"{path}: transformers cannot load {what} ({type(exc).__name__}: {first}); the checkpoint "
                          "is corrupted or from another transformers version, re-copy or re-export it") from None


def load_any(ref: str, device: str = "cpu"):
    """A packed llmbin checkpoint, or any model reference models.loading understands -> (model, tokenizer)."""
    path = Path(ref)
    if path.is_dir() and (path / "config.json").exists() and is_llmbin_checkpoint(path):
        return load_checkpoint(path, device)
    return load_model(ref, device)
