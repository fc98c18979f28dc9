"""`llmbin compare` output: report.md (one table), results.json, and ppl_vs_bits.png.

The plot puts each method at its all-in bits per weight (everything the checkpoint stores for the
quantized linears, divided by their weight count) against perplexity on a log axis, the full-precision
model as a labelled horizontal line. Labels are placed greedily: for each point the candidate offset
whose text box overlaps no earlier label, marker or the axes edge, nearest first.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .zeroshot import headline

FIGURE_DPI = 120


def _ppl(value) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if value < 1000 else f"{value:,.0f}"


def _bits(value) -> str:
    return "-" if value is None else f"{round(value, 3):g}"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes else f"{s} s"


def ppl_names(results: dict) -> list[str]:
    rows = [results["reference"], *results["methods"]]
    return list(dict.fromkeys(p["name"] for r in rows for p in r.get("perplexity", [])))


def task_names(results: dict) -> list[str]:
    rows = [results["reference"], *results["methods"]]
    return list(dict.fromkeys(t for r in rows for t in r.get("zeroshot", {}).get("tasks", {})))


def _ppl_of(row: dict, name: str):
    return next((p["ppl"] for p in row.get("perplexity", []) if p["name"] == name), None)


def _task_cell(row: dict, name: str) -> str:
    task = row.get("zeroshot", {}).get("tasks", {}).get(name)
    head = headline(task) if task else None
    if head is None:
        return "-"
    metric, m = head
    return f"{m['value']:.3f}" + (f" ± {m['stderr']:.3f}" if m["stderr"] is not None else "")


def _distill_note(row: dict) -> str:
    """A recipe's distill stage, which its params do not show, and what it did to the held-out loss."""
    stage = (row.get("recipe") or {}).get("distill") or {}
    if not stage.get("enabled"):
        return ""
    keys = ("loss", "nsamples", "eval_nsamples", "seqlen", "epochs", "lr")
    note = f", then distillation `{json.dumps({k: stage[k] for k in keys if k in stage}, sort_keys=True)}`"
    done = row.get("distill")
    if done:
        note += (f": held-out loss {done['loss_before']:.4f} -> {done['loss_after']:.4f} in {done['steps']} steps, "
                 + ("trained tensors kept" if done["kept"] else "no gain, original tensors kept"))
    return note


def markdown(results: dict) -> str:
    texts, tasks = ppl_names(results), task_names(results)
    ref = results["reference"]
    metric_names = {t: (headline(ref.get("zeroshot", {}).get("tasks", {}).get(t) or {"metrics": {}}) or ("acc",))[0]
                    for t in tasks}
    header = (["method", "paper bits", "all-in bits", "file MB", "bits/param"] + [f"ppl {Path(t).name}" for t in texts]
              + [f"{t} {metric_names[t]}" for t in tasks] + ["quantize time", "peak RSS (MB)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label, r, bits_paper, bits_all_in, seconds, rss):
        size = r.get("size") or {}
        mb = "-" if size.get("file_bytes") is None else f"{size['file_bytes'] / 1e6:.1f}"
        cells = [label, _bits(bits_paper), _bits(bits_all_in), mb, _bits(size.get("bits_per_parameter"))]
        cells += [_ppl(_ppl_of(r, t)) for t in texts]
        cells += [_task_cell(r, t) for t in tasks] + [_duration(seconds), "-" if rss is None else f"{rss:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    row(ref.get("label", "full precision"), ref, ref["bits"]["bpw_paper"], ref["bits"]["bpw_all_in"], None, None)
    for m in results["methods"]:
        if m.get("error"):
            lines.append("| " + " | ".join([m["label"], f"failed: {m['error']}"] + ["-"] * (len(header) - 2)) + " |")
            continue
        row(m["label"], m, m["bits"]["bpw_paper"], m["bits"]["bpw_all_in"], m["quantize_seconds"], m["peak_rss_mb"])

    cal, ev = results["calibration"], results["eval"]
    where = (f'protocol {ev["protocol"]}, seqlen {ev["seqlen"]}, first {ev["max_windows"] or "all"} windows'
             if ev["protocol"] == "gptq" else f'protocol lm-eval (wikitext word perplexity), max length {ev["seqlen"]}')
    out = [f"# Method comparison on {results['model']}", "",
           f"Calibration: `{cal['dataset']}`, {cal['nsamples']} windows x {cal['seqlen']} tokens, seed {cal['seed']}. "
           f"Perplexity: {where}.", ""]
    if tasks:
        out += [f"Tasks: lm-eval {results['versions']['lm_eval']}, {ev['num_fewshot'] or 0}-shot, limit "
                f"{ev['limit'] or 'none'}, seeds {ev['seeds']}; accuracy ± standard error.", ""]
    out += lines + [""]
    out += ["Paper bits count only the weight codes as the method's paper does; all-in bits are every byte the "
            "checkpoint stores for the quantized linears (codes, scales, offsets, salient indices, sparse "
            "corrections) per weight. Quantize time is wall time of llmbin.api.quantize in this process "
            "(model load + calibration + quantization + packing); peak RSS is the process's high-water mark "
            f"during it, {results.get('peak_rss_kind', 'reset before each method')}. File MB is every byte of the "
            "checkpoint's safetensors files (10^6 bytes; embeddings, head and norms included) and bits/param is that "
            "times 8 over all parameters of the source model; the full-precision row shows the source at fp16.", ""]
    for note in results.get("notes", []):
        out.append(f"- {note}")
    out += ["", "Recipes:", ""]
    for m in results["methods"]:
        out.append(f"- {m['label']}: `{json.dumps(m.get('recipe', {}).get('params', {}), sort_keys=True)}`"
                   + _distill_note(m))
    if results.get("command"):
        out += ["", f"Command: `{results['command']}`"]
    out += ["", f"Versions: {results['versions']}", "",
            "![perplexity vs all-in bits](ppl_vs_bits.png)", "",
            "![perplexity vs file size](ppl_vs_file_mb.png)", ""]
    return "\n".join(out)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box, frame) -> float:
    inner = _overlap(box, frame)
    return box.width * box.height - inner


MARKERS = "osD^vPXh<>p*"


def _cost(box, frame, obstacles, radius) -> float:
    return 1000 * _outside(box, frame) + 100 * sum(_overlap(box, o) for o in obstacles) + radius


def _crosses(a0, a1, b0, b1) -> bool:
    """Do segments a0-a1 and b0-b1 properly intersect (display coordinates)?"""
    def side(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    return (side(a0, a1, b0) * side(a0, a1, b1) < 0) and (side(b0, b1, a0) * side(b0, b1, a1) < 0)


def _leader_cost(start, end, leaders, boxes) -> float:
    """Leader lines should neither cross each other nor run through other labels."""
    crossings = sum(_crosses(start, end, a, b) for a, b in leaders)
    through = sum(any(box.contains(start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))
                      for t in (0.2, 0.4, 0.6, 0.8)) for box in boxes)
    return 5000 * crossings + 2000 * through


def place_labels(ax, points: list[tuple[float, float, str, str]], reference: tuple[float, str] | None = None) -> None:
    """Annotate (x, y, text, color) points so no label overlaps another label, a marker, the reference line
    or its label, or leaves the axes: the nearest clean candidate offset wins, points from the bottom up."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    half = 6 * fig.dpi / 72.0
    markers = []
    for x, y, _, _ in points:
        px, py = ax.transData.transform((x, y))
        markers.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    placed = list(markers)
    if reference is not None:  # its label goes at whichever end of the line is free of markers
        ref_y, ref_text = reference
        line_y = ax.transData.transform((0, ref_y))[1]
        best = None
        for fx, ha in ((0.99, "right"), (0.01, "left"), (0.5, "center")):
            for va in ("bottom", "top"):
                t = ax.text(fx, ref_y, ref_text, transform=ax.get_yaxis_transform(), ha=ha, va=va, fontsize=9,
                            color="0.25")
                box = t.get_window_extent(renderer).expanded(1.05, 1.3)
                t.remove()
                cost = _cost(box, frame, markers, 0)
                if best is None or cost < best[0]:
                    best = (cost, fx, ha, va, box)
        _, fx, ha, va, box = best
        ax.text(fx, ref_y, ref_text, transform=ax.get_yaxis_transform(), ha=ha, va=va, fontsize=9, color="0.25")
        placed += [box, Bbox.from_extents(frame.x0, line_y - 1.5, frame.x1, line_y + 1.5)]
    directions = [(1, 0), (1, 1), (1, -1), (0, 1), (0, -1), (-1, 0), (-1, 1), (-1, -1)]
    leaders, labels, px_per_pt = [], [], fig.dpi / 72.0
    for i in sorted(range(len(points)), key=lambda i: points[i][1]):
        x, y, text, color = points[i]
        start = ax.transData.transform((x, y))
        best = None
        for radius in (9, 14, 22, 32, 44, 58, 75, 95, 120):
            for dx, dy in directions:
                ha = "left" if dx > 0 else "right" if dx < 0 else "center"
                va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
                ann = ax.annotate(text, (x, y), xytext=(dx * radius, dy * radius), textcoords="offset points",
                                  ha=ha, va=va, fontsize=9, color=color)
                box = ann.get_window_extent(renderer).expanded(1.06, 1.15)
                ann.remove()
                end = (start[0] + dx * radius * px_per_pt, start[1] + dy * radius * px_per_pt)
                cost = _cost(box, frame, placed, radius) + _leader_cost(start, end, leaders, labels)
                if best is None or cost < best[0]:
                    best = (cost, dx * radius, dy * radius, ha, va, box, end)
            if best[0] < 1000:  # a clean spot at this radius: take the nearest
                break
        _, ox, oy, ha, va, box, end = best
        leaders.append((start, end))
        labels.append(box)
        arrow = dict(arrowstyle="-", color=color, lw=0.7, shrinkA=0, shrinkB=5) if abs(ox) + abs(oy) > 16 else None
        ax.annotate(text, (x, y), xytext=(ox, oy), textcoords="offset points", ha=ha, va=va, fontsize=9, color=color,
                    arrowprops=arrow)
        placed.append(box)


def _file_mb(row: dict):
    size = row.get("size") or {}
    return None if size.get("file_bytes") is None else size["file_bytes"] / 1e6


AXES = {"bits": (lambda m: m["bits"]["bpw_all_in"], "all-in bits per weight (codes + scales + offsets + indices)"),
        "file_mb": (_file_mb, "checkpoint file size (MB, every safetensors byte)")}


def plot_ppl_vs_bits(results: dict, path: str | Path, x: str = "bits") -> Path:
    """Perplexity against all-in bits of the linears (x="bits") or the whole checkpoint's file size (x="file_mb")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    texts = ppl_names(results)
    fig, axes = plt.subplots(1, max(len(texts), 1), figsize=(8.5 * max(len(texts), 1), 6), dpi=FIGURE_DPI,
                             squeeze=False)
    colors = plt.get_cmap("tab10").colors
    ok = [m for m in results["methods"] if not m.get("error")]
    pending = []
    for ax, text in zip(axes[0], texts or [""]):
        ref = _ppl_of(results["reference"], text)
        x_of, x_label = AXES[x]
        rows = [(x_of(m), _ppl_of(m, text), m["label"], k)
                for k, m in enumerate(ok) if _ppl_of(m, text) is not None and x_of(m) is not None]
        finite = [p for _, p, _, _ in rows if math.isfinite(p)] + ([ref] if ref and math.isfinite(ref) else [])
        lo, hi = (min(finite), max(finite)) if finite else (1.0, 10.0)
        span = max(math.log10(hi / lo), 0.3)
        ylim = (lo / 10 ** (0.25 * span), hi * 10 ** (0.3 * span))
        xs = [b for b, _, _, _ in rows] or [1.0]
        xpad = max(0.5 if x == "bits" else 0.05 * max(xs), 0.25 * (max(xs) - min(xs)))
        ax.set_yscale("log")
        ax.set_xlim(max(0.0, min(xs) - xpad), max(xs) + xpad)
        ax.set_ylim(*ylim)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        points = []
        for bits, ppl, label, k in rows:
            off_scale = not math.isfinite(ppl)
            y = ylim[1] / 10 ** (0.05 * span) if off_scale else ppl
            color = colors[k % len(colors)]
            # hollow, distinct shapes: two methods at (nearly) the same spot both stay visible
            ax.scatter([bits], [y], s=46, facecolors="none", edgecolors=[color], linewidths=1.6,
                       marker="^" if off_scale else MARKERS[k % len(MARKERS)], zorder=3)
            points.append((bits, y, f"{label}: {_ppl(ppl)}" + (" (off scale)" if off_scale else ""), color))
        if ref is not None and math.isfinite(ref):
            ax.axhline(ref, color="0.35", ls="--", lw=1, zorder=1)
        ax.set_xlabel(x_label)
        ax.set_ylabel("perplexity (log scale)")
        ev = results["eval"]
        ax.set_title(f"{results['model']}: {Path(text).name or 'perplexity'} (protocol {ev['protocol']}, "
                     f"seqlen {ev['seqlen']})", fontsize=10)
        pending.append((ax, points, (ref, f"full precision: {_ppl(ref)}") if ref and math.isfinite(ref) else None))
    failed = [m["label"] for m in results["methods"] if m.get("error")]
    if failed:
        fig.text(0.01, 0.01, f"not shown (failed): {', '.join(failed)}", fontsize=8, color="firebrick")
    fig.tight_layout()  # before placing labels: placement measures the final axes frame
    fig.canvas.draw()
    for ax, points, reference in pending:
        place_labels(ax, points, reference)
    path = Path(path)
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md", "plot": out / "ppl_vs_bits.png",
             "plot_file_mb": out / "ppl_vs_file_mb.png"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    if ppl_names(results):
        plot_ppl_vs_bits(results, paths["plot"])
        plot_ppl_vs_bits(results, paths["plot_file_mb"], x="file_mb")
    else:
        paths.pop("plot")
        paths.pop("plot_file_mb")
    paths["markdown"].write_text(markdown(results))
    return paths
