"""The full-precision teacher's side of distillation: it runs once over every window (training and held-out) and
leaves its cached top-k targets (loss.py), reused from the work area when a stage resumes. The cache is
safetensors + JSON (nothing is unpickled) and carries the key of what made it: a stale one is refused."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LlmbinError
from ..host.files import digest, load_tensors, save_tensors
from ..models.loading import load_model
from .data import DistillWindows, filled_windows, mixed_windows, selfgen_windows, text_windows
from .loss import TeacherCache, build_cache
from .options import DistillOptions
from .work_files import CACHE_FILE


def load_teacher(ref: str, device):
    try:
        return load_model(ref, str(device))
    except (LlmbinError, OSError) as exc:
        raise LlmbinError(f"cannot load the full-precision teacher {ref!r} ({str(exc).splitlines()[0][:120]}); "
                          "pass --teacher MODEL (the model the checkpoint was quantized from)") from None


def cached_teacher_targets(teacher_ref: str, tokenizer, dataset: str, options: DistillOptions, device, log,
                    state_dir: Path | None = None, teacher=None) -> tuple[DistillWindows, TeacherCache]:
    """Windows and the teacher's cached targets; with `state_dir`, reused from (and saved to) its cache file."""
    device = torch.device(device)
    if options.data == "calibration":
        if dataset == "selfgen":
            raise LlmbinError("the calibration data was selfgen; use --set distill.data=selfgen (or give --dataset)")
        windows = text_windows(dataset, tokenizer, options.nsamples, options.eval_nsamples, options.seqlen,
                               options.seed, None if options.fill == "selfgen" else log)  # a fill says it below
    else:
        windows = None  # sampled from the teacher below
    cache_file = None if state_dir is None else Path(state_dir) / CACHE_FILE
    key = _cache_key(teacher_ref, windows, options)
    if cache_file is not None and cache_file.exists():
        saved_windows, cache, saved_key = _load_cache(cache_file)
        if saved_key != key:
            raise LlmbinError(f"{cache_file} holds teacher targets for other settings, data or teacher than this run's; "
                              "rerun with the settings it was made with, or delete it to recompute the targets")
        log.note(f"distill: teacher targets reused from {cache_file}")
        return saved_windows, cache
    own = teacher is None
    if own:
        log.note(f"distill: loading the full-precision teacher {teacher_ref}")
        teacher, _ = load_teacher(teacher_ref, device)
    teacher.to(device).eval()
    if windows is None:
        windows = selfgen_windows(teacher, tokenizer, options.nsamples, options.eval_nsamples, options.seqlen,
                                  options.seed)
    else:
        if options.selfgen_share > 0:
            windows = mixed_windows(windows, teacher, tokenizer, options)
        if options.fill == "selfgen" and len(windows.train) < options.nsamples:
            log.note(f"distill: {dataset} holds {len(windows.train)} training windows of {options.seqlen} tokens; the "
                     f"teacher writes the other {options.nsamples - len(windows.train)} (distill.fill=selfgen)")
            windows = filled_windows(windows, teacher, tokenizer, options)
    from tqdm.auto import tqdm

    everything = windows.all()
    with tqdm(total=len(everything), desc="teacher pass", unit="window", disable=not getattr(log, "verbose", True)) as bar:
        cache = build_cache(teacher, everything, options.topk, options.temperature, options.batch_size, device, bar.update)
    if own:
        del teacher
    if cache_file is not None:
        _save_cache(cache_file, windows, cache, key)
    return windows, cache


def _cache_key(teacher_ref, windows: DistillWindows | None, options: DistillOptions) -> str:
    """What the targets depend on. Text windows are known before the teacher runs (their tokens count); selfgen
    windows are sampled by the teacher, so their recipe (counts, length, seed) stands in for them."""
    data = (digest(windows.all()), len(windows.train), options.selfgen_share,
            options.nsamples if options.fill == "selfgen" else 0) if windows is not None else \
        ("selfgen", options.nsamples, options.eval_nsamples, options.seqlen, options.seed)
    return digest([teacher_ref, data, options.topk, options.temperature])


def _save_cache(path: Path, windows: DistillWindows, cache: TeacherCache, key: str) -> None:
    tensors = {"train": windows.train, "held_out": windows.held_out, "logp": cache.logp, "ids": cache.ids,
               "log_rest": cache.log_rest, "entropy": cache.entropy}
    save_tensors(path, tensors, {"key": key, "vocab": cache.vocab, "source": windows.source,
                                 "train_starts": windows.train_starts, "held_out_starts": windows.held_out_starts})


def _load_cache(path: Path) -> tuple[DistillWindows, TeacherCache, str | None]:
    t, info = load_tensors(path)
    try:
        windows = DistillWindows(t["train"], t["held_out"], info["train_starts"], info["held_out_starts"], info["source"])
        cache = TeacherCache(t["logp"], t["ids"], t["log_rest"], t["entropy"], int(info["vocab"]))
    except (KeyError, TypeError, ValueError):
        raise LlmbinError(f"{path} is not a teacher-target cache of this llmbin; delete it and rerun") from None
    return windows, cache, info.get("key")
