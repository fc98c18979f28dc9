"""Public Python API: quantize, save, load, evaluate. The CLI calls only this."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import calibration_windows, load_text, token_stream
from .data.windows import token_hash
from .errors import LlmbinError
from .methods import get_method
from .methods.base import QuantResult
from .models.loading import load_config, load_model
from .pipeline import QuantLog, peak_rss_mb, quantize_model
from .recipe import Recipe


@dataclass
class ModelContext:
    """What model-level stages (on_model_end) get: the calibration data and where to reach the original."""

    model_ref: str
    tokenizer: object
    calib_windows: torch.Tensor
    device: torch.device
    generator: torch.Generator
    log: QuantLog
    results: dict


@dataclass
class QuantizedModel:
    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe
    results: dict[str, QuantResult]
    info: dict = field(default_factory=dict)
    log: QuantLog | None = None

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        from .checkpoint import save_checkpoint

        return save_checkpoint(self.model, self.tokenizer, self.results, out, self.info,
                               self.log.jsonl() if self.log else "", overwrite)


def max_context(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None) or getattr(getattr(config, "text_config", None), key, None)
        if value:
            return int(value)
    return None


def calibration_ids(model, tokenizer, recipe: Recipe) -> tuple[torch.Tensor, str]:
    cal = recipe.calibration
    if cal.nsamples < 1 or cal.seqlen < 2:
        raise LlmbinError(f"nsamples ({cal.nsamples}) must be >= 1 and seqlen ({cal.seqlen}) >= 2")
    if cal.dataset == "selfgen":
        from .data.selfgen import generate_windows

        return generate_windows(model, tokenizer, cal.nsamples, cal.seqlen, cal.seed), "selfgen"
    ids = token_stream(tokenizer, load_text(cal.dataset, split="calibration"))
    return calibration_windows(ids, cal.nsamples, cal.seqlen, cal.seed), cal.dataset


def provenance(model_ref: str, recipe: Recipe, calib_source: str, windows: torch.Tensor) -> dict:
    import transformers

    from . import __version__

    return {"llmbin": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "model": model_ref, "seed": recipe.calibration.seed, "calibration": calib_source,
            "calibration_windows": list(windows.shape), "calibration_token_hash": token_hash(windows)}


def quantize(model_ref: str, recipe: Recipe, out: str | Path | None = None, overwrite: bool = False,
             verbose: bool = True, trust_remote_code: bool = False) -> QuantizedModel:
    """Quantize a model reference with a recipe; with `out`, write the packed checkpoint there."""
    method = get_method(recipe.method)(recipe.params)
    if out is not None and Path(out).exists() and not overwrite:
        raise LlmbinError(f"{out} already exists; choose another -o or pass --overwrite")
    config = load_config(model_ref, trust_remote_code)
    context = max_context(config)
    if context is not None and recipe.calibration.seqlen > context:
        raise LlmbinError(f"seqlen {recipe.calibration.seqlen} is above {model_ref}'s context of {context} tokens; "
                          f"use --seqlen {context} or less")
    start = time.perf_counter()
    device = torch.device(recipe.pipeline.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LlmbinError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
    model, tokenizer = load_model(model_ref, recipe.pipeline.device, trust_remote_code=trust_remote_code)
    windows, calib_source = calibration_ids(model, tokenizer, recipe)
    log = QuantLog(verbose=verbose)
    results = quantize_model(model, method, windows, recipe.pipeline, recipe.calibration.seed, log)
    generator = torch.Generator().manual_seed(recipe.calibration.seed)
    method.on_model_end(model, ModelContext(model_ref, tokenizer, windows, device, generator, log, results))
    info = {"recipe": recipe.to_dict(), "provenance": provenance(model_ref, recipe, calib_source, windows),
            "skipped_modules": sorted(_unquantized_linears(model, results)),
            "quantize_seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    notes = getattr(method, "model_card_notes", None)
    if notes:
        info["method_notes"] = notes()
    qm = QuantizedModel(model, tokenizer, recipe, results, info, log)
    if out is not None:
        qm.save(out, overwrite)
    return qm


def _unquantized_linears(model, results) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in results]


def load(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load a packed llmbin checkpoint -> (model, tokenizer)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(path, device, dtype)


def load_any(ref: str, device: str = "cpu"):
    """A packed llmbin checkpoint, or any model reference load_model understands."""
    from .checkpoint import read_quant_config

    path = Path(ref)
    if path.is_dir() and (path / "config.json").exists():
        try:
            read_quant_config(path)
        except LlmbinError as exc:
            if "not an llmbin checkpoint" not in str(exc):
                raise
        else:
            return load(path, device)
    return load_model(ref, device)


def evaluate_ppl(model, tokenizer, sources: list[str], seqlen: int, max_windows: int | None = None,
                 bos: bool = False) -> list[dict]:
    from .eval.ppl import perplexity

    context = max_context(model.config)
    if context is not None and seqlen > context:
        raise LlmbinError(f"seqlen {seqlen} is above the model's context of {context} tokens")
    return [perplexity(model, tokenizer, s, seqlen, max_windows, bos) for s in sources]
