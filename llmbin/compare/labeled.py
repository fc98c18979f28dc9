"""`--gguf` / `--checkpoint` arguments: LABEL=PATH or PATH, each path checked, labels unique."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import LlmbinError


def labeled_paths(items, option: str, valid: Callable[[Path], bool], what: str, expected: str,
                  default_label: Callable[[Path], str]) -> list[tuple[str, Path]]:
    """('LABEL=PATH' or 'PATH', ...) -> [(label, path)]; a path `valid` refuses (`what` it should be), or a label given
    twice, stops with one line naming the option and what it takes (`expected`, e.g. "FILE.gguf")."""
    rows = []
    for item in items:
        label, sep, path = item.partition("=")
        label, path = (label.strip(), Path(path.strip())) if sep else (default_label(Path(item)), Path(item))
        if not valid(path):
            raise LlmbinError(f"{option} {item!r}: not {what}; give {expected} or LABEL={expected}")
        rows.append((label, path))
    labels = [label for label, _ in rows]
    if len(set(labels)) != len(labels):
        raise LlmbinError(f"{option} rows share a label ({', '.join(labels)}); name them LABEL={expected}")
    return rows
