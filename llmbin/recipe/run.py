"""Running a recipe on a model: load it, calibrate layer by layer (the method's passes), distill, pack the
embeddings, write the checkpoint. `llmbin.quantize` and `llmbin quantize` are this."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..calibrate.embeddings import check_options, quantize_embeddings
from ..calibrate.options import stream_setting
from ..calibrate.pipeline import quantize_model
from ..calibrate.quant_log import QuantLog
from ..checkpoint.storage_dtype import dtype_name, round_to_storage, source_dtype
from ..checkpoint.workarea import WorkArea
from ..data import calibration_windows, load_text, token_stream
from ..data.selfgen import generate_windows
from ..data.windows import token_hash
from ..distill.after_quantize import distill_quantized
from ..distill.notes import card_notes, config_entry
from ..distill.work_files import clear_state
from ..errors import LlmbinError
from ..host.environment import versions
from ..host.files import digest
from ..host.memory import peak_rss_mb, release_freed_memory
from ..methods import get_method
from ..models.context import max_context
from ..models.loading import BUNDLED, load_config, load_model, resolve
from ..models.streaming import StreamedModel
from .recipe import Recipe
from .result import QuantizedModel
from .stream_choice import choose_stream


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


def calibration_ids(model, tokenizer, recipe: Recipe) -> tuple[torch.Tensor, str]:
    """The calibration windows: the recipe's text, with calibration.selfgen_share of them written by the model."""
    cal = recipe.calibration
    if cal.nsamples < 1 or cal.seqlen < 2:
        raise LlmbinError(f"nsamples ({cal.nsamples}) must be >= 1 and seqlen ({cal.seqlen}) >= 2")
    if not 0 <= cal.selfgen_share <= 1:
        raise LlmbinError(f"calibration.selfgen_share must be in [0, 1], not {cal.selfgen_share}")
    if cal.dataset == "selfgen":
        return generate_windows(model, tokenizer, cal.nsamples, cal.seqlen, cal.seed), "selfgen"
    n_gen = round(cal.selfgen_share * cal.nsamples)
    text = calibration_windows(token_stream(tokenizer, load_text(cal.dataset, split="calibration")),
                               cal.nsamples - n_gen, cal.seqlen, cal.seed) if n_gen < cal.nsamples else None
    if n_gen == 0:
        return text, cal.dataset
    gen = generate_windows(model, tokenizer, n_gen, cal.seqlen, cal.seed)
    return (gen if text is None else torch.cat([text, gen])), f"{cal.dataset} + {n_gen} selfgen windows"


def provenance(model_ref: str, recipe: Recipe, calib_source: str, windows: torch.Tensor) -> dict:
    return {**versions(), "model": model_ref, "seed": recipe.calibration.seed, "calibration": calib_source,
            "calibration_windows": list(windows.shape), "calibration_token_hash": token_hash(windows)}


def model_revision(model_ref: str) -> str:
    """What identifies the weights: bundled package version, hub commit, or local file names and sizes."""
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


def run_recipe(model_ref: str, recipe: Recipe, out: str | Path | None = None, overwrite: bool = False,
               resume: bool = False, verbose: bool = True, trust_remote_code: bool = False) -> QuantizedModel:
    """Quantize a model reference with a recipe; with `out`, write the packed checkpoint there.

    Finished layers go to OUT's work area as they complete; `resume=True` continues an interrupted run.
    """
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
    log = QuantLog(verbose=verbose)
    asked = stream_setting(recipe.pipeline.stream)
    # the run's own copy records what it did (the caller's recipe keeps `auto` for its next model)
    recipe = replace(recipe, pipeline=replace(recipe.pipeline, stream=choose_stream(recipe, config, log.note,
                                                                                    trust_remote_code=trust_remote_code)))
    stream = None
    if recipe.pipeline.stream:
        try:
            stream = StreamedModel(model_ref, torch.float32 if device.type == "cpu" else torch.bfloat16,
                                   trust_remote_code)
        except LlmbinError as exc:
            if asked != "auto":
                raise
            log.note(f"pipeline.stream=auto: {model_ref} cannot be streamed ({str(exc).split(';')[0]}); "
                     "loading it whole")
            recipe.pipeline.stream = False
    if stream is not None:
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
        work = WorkArea(out, fingerprint, resume=resume, overwrite=overwrite, storage_dtype=storage)
    try:
        def quantize_pass(pass_method, pass_work, final: bool = False):
            # a streamed final pass keeps no codes in memory (they are in the work area); an earlier pass (PTQ1.61's
            # preprocessing) hands its formats on
            return quantize_model(model, pass_method, windows, recipe.pipeline, recipe.calibration.seed, log, pass_work,
                                  stream, drop_written=final and stream is not None)

        before = ModelContext(model_ref, tokenizer, windows, device, torch.Generator().manual_seed(recipe.calibration.seed),
                              log, {})
        method.prepare_model(model, before, work, quantize_pass)
        results = quantize_pass(method, work, final=True)
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
    state_dir = None if work is None else work.path
    stats = distill_quantized(model, results, model_ref, tokenizer, recipe.calibration.dataset, recipe.distill, device,
                              log, state_dir, recipe.pipeline.memory_budget_mb)
    clear_state(state_dir)  # the work area becomes the checkpoint
    return stats


def _unquantized_linears(model, results) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in results]
