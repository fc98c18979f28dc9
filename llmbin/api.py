"""Public Python API: quantize, save, load, evaluate. The CLI calls only this."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import calibration_windows, load_text, token_stream
from .data.windows import token_hash
from .workarea import digest
from .errors import LlmbinError
from .host_memory import release_freed_memory
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
    info: dict = field(default_factory=dict)  # goes into quantization_config (deterministic: no timings)
    log: QuantLog | None = None
    fingerprint: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # wall time, peak RSS of the run

    def save(self, out: str | Path, overwrite: bool = False, work=None, rewrite_layers: bool = False) -> Path:
        from .checkpoint import write_checkpoint
        from .workarea import WorkArea

        from .storage import NAMES

        work = work or WorkArea(out, self.fingerprint, overwrite=overwrite,
                                storage_dtype=NAMES.get(self.info.get("storage_dtype")))
        return write_checkpoint(self.model, self.tokenizer, self.results, work, self.info,
                                self.log.jsonl() if self.log else "", overwrite, rewrite_layers)


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
    from .eval.suite import versions

    return {**versions(), "model": model_ref, "seed": recipe.calibration.seed, "calibration": calib_source,
            "calibration_windows": list(windows.shape), "calibration_token_hash": token_hash(windows)}


def model_revision(model_ref: str) -> str:
    """What identifies the weights: bundled package version, hub commit, or local file names and sizes."""
    from .models.loading import BUNDLED, resolve

    if model_ref in BUNDLED:
        return BUNDLED[model_ref].revision()
    source, kwargs = resolve(model_ref)
    path = Path(source)
    if path.is_dir():
        files = [path / kwargs["gguf_file"]] if "gguf_file" in kwargs else sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        return digest([(f.name, f.stat().st_size) for f in files])
    return model_ref


def check_finite(model) -> None:
    for name, param in model.named_parameters():
        if param.is_floating_point() and not torch.isfinite(param).all():
            raise LlmbinError(f"{name} has NaN or infinite weights; the model file is corrupted, re-download or re-export it")


def quantize(model_ref: str, recipe: Recipe, out: str | Path | None = None, overwrite: bool = False,
             resume: bool = False, verbose: bool = True, trust_remote_code: bool = False) -> QuantizedModel:
    """Quantize a model reference with a recipe; with `out`, write the packed checkpoint there.

    Finished layers go to OUT's work area as they complete; `resume=True` continues an interrupted run.
    """
    from .embeddings import check_options, quantize_embeddings
    from .storage import dtype_name, round_to_storage, source_dtype

    method = get_method(recipe.method)(recipe.params)
    check_options(recipe.pipeline)
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
    stream = None
    if recipe.pipeline.stream:
        from .models.streaming import StreamedModel

        stream = StreamedModel(model_ref, torch.float32 if device.type == "cpu" else torch.bfloat16, trust_remote_code)
        model, tokenizer = stream.model, stream.tokenizer
    else:
        model, tokenizer = load_model(model_ref, recipe.pipeline.device, trust_remote_code=trust_remote_code)
    storage = source_dtype(model_ref, config)
    if stream is None:
        check_finite(model)
        round_to_storage(model, storage)  # quantize, evaluate and store the same numbers
        release_freed_memory()  # the rounding's temporaries
    windows, calib_source = calibration_ids(model, tokenizer, recipe)
    fingerprint = {"config": digest(config.to_dict()), "recipe": digest(recipe.to_dict()),
                   "model_revision": model_revision(model_ref), "calibration": token_hash(windows)}
    work = None
    if out is not None:
        from .workarea import WorkArea

        work = WorkArea(out, fingerprint, resume=resume, overwrite=overwrite, storage_dtype=storage)
    log = QuantLog(verbose=verbose)
    try:
        def quantize_pass(pass_method, pass_work):
            return quantize_model(model, pass_method, windows, recipe.pipeline, recipe.calibration.seed, log, pass_work,
                                  stream)

        stage = ModelContext(model_ref, tokenizer, windows, device, torch.Generator().manual_seed(recipe.calibration.seed),
                             log, {})
        method.prepare_model(model, stage, work, quantize_pass)
        results = quantize_pass(method, work)
        generator = torch.Generator().manual_seed(recipe.calibration.seed)
        changed = method.on_model_end(model, ModelContext(model_ref, tokenizer, windows, device, generator, log, results))
        # distillation trains the decoder's scales with the float embeddings and head; they are packed after it,
        # the head calibrated on the distilled decoder's final hidden states
        distill_stats = _distill_stage(model, results, model_ref, tokenizer, recipe, device, log, work)
        changed = changed or bool(distill_stats and distill_stats["kept"])
        embeddings = quantize_embeddings(model, recipe.pipeline, windows, log, streamed=stream is not None)
    except LlmbinError:
        if work is not None and not work.finished:
            work.discard()  # nothing worth resuming
        elif work is not None:
            log.note(f"finished layers are kept in {work.path}; fix the problem and rerun with --resume")
        raise
    info = {"recipe": recipe.to_dict(), "provenance": provenance(model_ref, recipe, calib_source, windows),
            "skipped_modules": sorted(_unquantized_linears(model, results)), "embeddings": embeddings,
            "storage_dtype": dtype_name(storage)}
    notes = getattr(method, "model_card_notes", None)
    if notes:
        info["method_notes"] = notes()
    if distill_stats:
        from .distill.run import card_notes, config_entry

        info["distill"] = config_entry(recipe.distill, distill_stats)
        info["method_notes"] = "\n\n".join(filter(None, [info.get("method_notes"), card_notes(recipe.distill, distill_stats)]))
    run_stats = {"quantize_seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    log.records.append({"summary": run_stats})
    qm = QuantizedModel(model, tokenizer, recipe, results, info, log, fingerprint, run_stats)
    if out is not None:
        qm.save(out, overwrite, work=work, rewrite_layers=bool(changed))
    return qm


def _distill_stage(model, results, model_ref, tokenizer, recipe: Recipe, device, log, work) -> dict | None:
    """The recipe's `distill:` stage after the last layer (state in OUT's work area, so --resume continues it)."""
    if not recipe.distill.enabled:
        return None
    from .distill.run import clear_state, distill_quantized

    state_dir = None if work is None else work.path
    stats = distill_quantized(model, results, model_ref, tokenizer, recipe.calibration.dataset, recipe.distill, device,
                              log, state_dir, recipe.pipeline.memory_budget_mb)
    clear_state(state_dir)  # the work area becomes the checkpoint
    return stats


def distill(checkpoint: str | Path, out: str | Path, teacher: str | None = None, dataset: str | None = None,
            options=None, device: str = "cpu", resume: bool = False, overwrite: bool = False, verbose: bool = True,
            memory_budget_mb: int = 0):
    """Distill a packed checkpoint against its full-precision teacher (from its provenance, or `teacher`) into `out`.

    -> DistillOutcome (model: the trained student; formats; stats; path). See llmbin/distill.
    """
    from .distill.run import distill_checkpoint

    return distill_checkpoint(checkpoint, out, teacher, dataset, options, device, resume, overwrite, verbose,
                              memory_budget_mb)


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
