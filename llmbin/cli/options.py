"""What several commands share: `--set KEY=VALUE` parsing and writing `--json` results."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import LlmbinError
from ..host.files import atomic_write_text


def parse_set(items) -> list[tuple[str, str]]:
    """('key=value', ...) -> [(key, value)], stripped; an item without '=' is refused with one line."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LlmbinError(f"--set takes KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def write_json(path: str | None, data) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
