"""Where a layer's calibration inputs wait: host memory, or safetensors files in a temp directory."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file


class ActivationCache:
    """A list of (hidden states, args, kwargs) batches; only the hidden states (the big part) go to disk."""

    def __init__(self, location: str = "cpu", directory: str | None = None):
        self.location = location
        self.items: list = []
        self.dir = Path(tempfile.mkdtemp(prefix="llmbin-acts-", dir=directory)) if location == "disk" else None

    def __len__(self) -> int:
        return len(self.items)

    def append(self, batch) -> None:
        hidden, args, kwargs = batch
        if self.dir is not None:
            path = self.dir / f"{len(self.items)}.safetensors"
            save_file({"hidden": hidden.detach().cpu().contiguous()}, str(path))
            self.items.append((path, args, kwargs))
        else:
            self.items.append((hidden.detach().cpu(), args, kwargs))

    def get(self, i: int):
        hidden, args, kwargs = self.items[i]
        if self.dir is not None:
            hidden = load_file(str(hidden))["hidden"]
        return hidden, args, kwargs

    def close(self) -> None:
        self.items = []
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
