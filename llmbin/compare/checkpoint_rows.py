"""Finished llmbin checkpoints as compare rows: scored by the same protocol as the rows quantized in the run, sized
by the same inspection, so a checkpoint made elsewhere (a long recipe, another machine) joins the chart unchanged."""
from __future__ import annotations

from pathlib import Path

from ..checkpoint.inspect import inspect_checkpoint
from ..checkpoint.reader import is_llmbin_checkpoint, read_quant_config
from .labeled import labeled_paths


def parse_checkpoint_rows(items) -> list[tuple[str, Path]]:
    """('ptq161=out/smol-ptq161' or 'out/smol-ptq161', ...) -> [(label, dir)]; the label defaults to the folder name."""
    return labeled_paths(items, "--checkpoint", lambda p: (p / "config.json").is_file() and is_llmbin_checkpoint(p),
                         "an llmbin checkpoint directory", "DIR", lambda p: p.name)


def checkpoint_stamp(path: Path) -> list:
    """Bytes and newest modification time of the checkpoint's files: a row is reused only for the same files."""
    files = [p for p in path.iterdir() if p.is_file()]
    return [sum(p.stat().st_size for p in files), max(p.stat().st_mtime_ns for p in files)]


def checkpoint_record(label: str, path: Path) -> dict:
    qc = read_quant_config(path)
    recipe = qc.get("recipe") if isinstance(qc.get("recipe"), dict) else None
    inspected = inspect_checkpoint(path)
    totals = inspected["totals"]
    return {"label": label, "method": (recipe or {}).get("method", "llmbin"), "kind": "checkpoint",
            "file": str(path.resolve()), "file_stamp": checkpoint_stamp(path), "recipe": recipe, "error": None,
            "bits": {"bpw_paper": totals["bpw_paper"], "bpw_all_in": totals["bpw_all_in"],
                     "quantized_bytes": totals["quantized_bytes"]},
            "size": inspected["whole_model"]}
