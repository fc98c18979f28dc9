"""The full-precision teacher's side of distillation: it runs once over every window (training and held-out) and
leaves its cached top-k targets (loss.py), reused from the work area when a stage resumes."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import LlmbinError
from ..host.files import atomic_path, digest
from ..models.loading import load_model
from .data import DistillWindows, selfgen_windows, text_windows
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
                               options.seed, log)
    else:
        windows = None  # sampled from the teacher below
    cache_file = None if state_dir is None else Path(state_dir) / CACHE_FILE
    if cache_file is not None and cache_file.exists():
        saved = torch.load(cache_file, weights_only=False)
        if windows is None or digest(saved["key"]) == digest(_cache_key(teacher_ref, windows, options)):
            log.note(f"distill: teacher targets reused from {cache_file}")
            return saved["windows"], TeacherCache(**saved["cache"])
    own = teacher is None
    if own:
        log.note(f"distill: loading the full-precision teacher {teacher_ref}")
        teacher, _ = load_teacher(teacher_ref, device)
    teacher.to(device).eval()
    if windows is None:
        windows = selfgen_windows(teacher, tokenizer, options.nsamples, options.eval_nsamples, options.seqlen,
                                  options.seed)
    from tqdm.auto import tqdm

    everything = windows.all()
    with tqdm(total=len(everything), desc="teacher pass", unit="window", disable=not getattr(log, "verbose", True)) as bar:
        cache = build_cache(teacher, everything, options.topk, options.temperature, options.batch_size, device, bar.update)
    if own:
        del teacher
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            torch.save({"key": _cache_key(teacher_ref, windows, options), "windows": windows, "cache": cache.state()}, tmp)
    return windows, cache


def _cache_key(teacher_ref, windows: DistillWindows, options: DistillOptions):
    return (teacher_ref, digest(windows.all()), len(windows.train), options.topk, options.temperature)
