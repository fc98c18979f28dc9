"""Reading compare's results rows: perplexities by text, task names, file sizes, and how a perplexity prints."""
from __future__ import annotations

import math


def fmt_ppl(value) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if value < 1000 else f"{value:,.0f}"


def ppl_names(results: dict) -> list[str]:
    rows = [results["reference"], *results["methods"]]
    return list(dict.fromkeys(p["name"] for r in rows for p in r.get("perplexity", [])))


def task_names(results: dict) -> list[str]:
    rows = [results["reference"], *results["methods"]]
    return list(dict.fromkeys(t for r in rows for t in r.get("zeroshot", {}).get("tasks", {})))


def ppl_of(row: dict, name: str):
    return next((p["ppl"] for p in row.get("perplexity", []) if p["name"] == name), None)


def file_mb(row: dict):
    size = row.get("size") or {}
    return None if size.get("file_bytes") is None else size["file_bytes"] / 1e6


AXES = {"bits": (lambda m: m["bits"]["bpw_all_in"], "all-in bits per weight (codes + scales + offsets + indices)"),
        "file_mb": (file_mb, "checkpoint file size (MB, every safetensors byte)")}


def pareto_front(rows: list[dict], text: str, size=file_mb) -> list[str]:
    """Labels of the rows no other row beats: none has lower or equal perplexity on `text` at lower or equal size
    with one of the two strictly lower. Rows without a size or a finite perplexity take no part."""
    import math

    points = [(size(m), ppl_of(m, text), m["label"]) for m in rows if not m.get("error")]
    points = [(s, p, label) for s, p, label in points if s is not None and p is not None and math.isfinite(p)]
    return [label for s, p, label in sorted(points)
            if not any(s2 <= s and p2 <= p and (s2, p2) != (s, p) for s2, p2, _ in points)]
