"""Writing distilled tensors into a copy of a packed checkpoint's shards: only the continuous tensors of the
distilled modules change; codes, planes and masks keep their bytes."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from ..checkpoint.reader import shard_files
from ..errors import LlmbinError
from ..host.files import atomic_path


def rewrite_float_tensors(work: Path, formats: dict) -> None:
    """Overwrite only the continuous tensors of the distilled modules in the copied shards (codes keep their bytes)."""
    wanted = {f"{n}.{t}": v for n, f in formats.items() for t, v in f.tensors().items() if t in f.float_fields}
    for shard in shard_files(work):
        tensors = load_file(str(shard))
        hits = [k for k in tensors if k in wanted]
        if not hits:
            continue
        for key in hits:
            if tensors[key].shape != wanted[key].shape or tensors[key].dtype != wanted[key].dtype:
                raise LlmbinError(f"{key}: distilled tensor does not match the stored layout; the checkpoint changed")
            tensors[key] = wanted.pop(key).contiguous()
        with atomic_path(shard) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
    if wanted:
        raise LlmbinError(f"{len(wanted)} distilled tensor(s) (e.g. {next(iter(wanted))}) are missing from the shards")
