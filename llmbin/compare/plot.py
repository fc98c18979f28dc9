"""The compare chart: perplexity against bits (or file size) for every row, labels placed clear of each other."""
from __future__ import annotations

import math
from pathlib import Path

from .rows import file_mb, fmt_ppl, pareto_front, ppl_names, ppl_of

FIGURE_DPI = 120
AXES = {"bits": (lambda m: m["bits"]["bpw_all_in"], "all-in bits per weight (codes + scales + offsets + indices)"),
        "file_mb": (file_mb, "checkpoint file size (MB, every safetensors byte)")}


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
        ref = ppl_of(results["reference"], text)
        x_of, x_label = AXES[x]
        rows = [(x_of(m), ppl_of(m, text), m["label"], k)
                for k, m in enumerate(ok) if ppl_of(m, text) is not None and x_of(m) is not None]
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
            gguf = ok[k].get("kind") == "gguf"  # llama.cpp's files: filled squares; llmbin's rows: hollow shapes
            # hollow, distinct shapes: two methods at (nearly) the same spot both stay visible
            ax.scatter([bits], [y], s=46, facecolors=[color] if gguf else "none", edgecolors=[color], linewidths=1.6,
                       marker="^" if off_scale else ("s" if gguf else MARKERS[k % len(MARKERS)]), zorder=3)
            points.append((bits, y, f"{label}: {fmt_ppl(ppl)}" + (" (off scale)" if off_scale else ""), color))
        if x == "file_mb":  # the Pareto front: the smallest file for each perplexity
            front = {m["label"]: m for m in ok}
            line = sorted((file_mb(front[label]), ppl_of(front[label], text)) for label in pareto_front(ok, text))
            if len(line) > 1:
                ax.step([p[0] for p in line], [p[1] for p in line], where="post", color="0.2", lw=1.1, ls=":",
                        zorder=2, label="Pareto front")
                ax.legend(loc="lower left", fontsize=8, frameon=False)
        if ref is not None and math.isfinite(ref):
            ax.axhline(ref, color="0.35", ls="--", lw=1, zorder=1)
        ax.set_xlabel(x_label)
        ax.set_ylabel("perplexity (log scale)")
        ev = results["eval"]
        ax.set_title(f"{results['model']}: {Path(text).name or 'perplexity'} (protocol {ev['protocol']}, "
                     f"seqlen {ev['seqlen']})", fontsize=10)
        pending.append((ax, points, (ref, f"full precision: {fmt_ppl(ref)}") if ref and math.isfinite(ref) else None))
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
