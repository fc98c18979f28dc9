"""The files a distillation keeps in its work area between runs, so a killed stage resumes where it stopped."""
from __future__ import annotations

from pathlib import Path

STATE_FILE = "distill-state.safetensors"  # step, trained tensors, Adam moments, best state (stage.py)
CACHE_FILE = "distill-teacher.safetensors"  # windows and the teacher's cached targets (teacher.py)


def clear_state(state_dir: Path | None) -> None:
    """Delete both files once the stage's result is written."""
    if state_dir is not None:
        for name in (STATE_FILE, CACHE_FILE):
            (Path(state_dir) / name).unlink(missing_ok=True)
