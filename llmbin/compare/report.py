"""`llmbin compare` output: report.md (one table), results.json, and ppl_vs_bits.png.

The plot puts each method at its all-in bits per weight (everything the checkpoint stores for the
quantized linears, divided by their weight count) against perplexity on a log axis, the full-precision
model as a labelled horizontal line. Labels are placed greedily: for each point the candidate offset
whose text box overlaps no earlier label, marker or the axes edge, nearest first.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..eval.zeroshot import headline
from ..host.files import atomic_write_text
from .plot import plot_ppl_vs_bits
from .rows import fmt_ppl, pareto_front, ppl_names, ppl_of, task_names

def _bits(value) -> str:
    return "-" if value is None else f"{round(value, 3):g}"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes else f"{s} s"


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
        cells += [fmt_ppl(ppl_of(r, t)) for t in texts]
        cells += [_task_cell(r, t) for t in tasks] + [_duration(seconds), "-" if rss is None else f"{rss:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    row(ref.get("label", "full precision"), ref, ref["bits"]["bpw_paper"], ref["bits"]["bpw_all_in"], None, None)
    for m in results["methods"]:
        if m.get("error"):
            lines.append("| " + " | ".join([m["label"], f"failed: {m['error']}"] + ["-"] * (len(header) - 2)) + " |")
            continue
        row(m["label"], m, m["bits"]["bpw_paper"], m["bits"]["bpw_all_in"], m.get("quantize_seconds"),
            m.get("peak_rss_mb"))

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
    for text in texts:
        front = pareto_front(results["methods"] + [results["reference"]], text)
        if front:
            out.append(f"Pareto front of file MB against ppl {Path(text).name} (no row is smaller and better): "
                       f"{', '.join(front)}.")
    if texts:
        out.append("")
    for note in results.get("notes", []):
        out.append(f"- {note}")
    out += ["", "Recipes:", ""]
    for m in results["methods"]:
        if m.get("kind") == "gguf":
            size = m.get("size") or {}
            out.append(f"- {m['label']}: llama.cpp GGUF `{Path(m['file']).name}` (tensor types "
                       f"{size.get('tensor_types')}; all-in bits are its decoder matrices' bits per weight), scored "
                       "through transformers' GGUF loader")
            continue
        if m.get("kind") == "checkpoint":
            out.append(f"- {m['label']}: the llmbin checkpoint `{Path(m['file']).name}`, scored as it is: "
                       f"`{json.dumps((m.get('recipe') or {}).get('params', {}), sort_keys=True)}`")
            continue
        out.append(f"- {m['label']}: `{json.dumps((m.get('recipe') or {}).get('params', {}), sort_keys=True)}`"
                   + _distill_note(m))
    for m in results["methods"]:
        out += sensitivity_table(m)
    if results.get("command"):
        out += ["", f"Command: `{results['command']}`"]
    out += ["", f"Versions: {results['versions']}", "",
            "![perplexity vs all-in bits](ppl_vs_bits.png)", "",
            "![perplexity vs file size](ppl_vs_file_mb.png)", ""]
    return "\n".join(out)


def sensitivity_table(row: dict) -> list[str]:
    """Decoder layers x projections: each linear's relative output error tr(E H E^T) / tr(W H W^T) on its own
    calibration inputs; the ground for giving the costly ones more bits."""
    values = row.get("sensitivity") or {}
    cells: dict[int, dict[str, float]] = {}
    for module, value in values.items():
        match = re.search(r"\.(\d+)\.(?:.*\.)?([A-Za-z0-9_]+)$", module)
        if match:
            cells.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not cells:
        return []
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    projections = sorted({p for c in cells.values() for p in c}, key=lambda p: (order.index(p) if p in order else 99, p))
    worst = sorted(values.items(), key=lambda kv: -kv[1])[:5]
    lines = ["", f"Sensitivity of {row['label']} (relative output error of each quantized linear on its calibration "
             "inputs; most costly: " + ", ".join(f"{m} {v:.3g}" for m, v in worst) + "):", "",
             "| layer | " + " | ".join(projections) + " | mean |", "|" + "---|" * (len(projections) + 2)]
    for layer in sorted(cells):
        row_values = [cells[layer].get(p) for p in projections]
        present = [v for v in row_values if v is not None]
        lines.append(f"| {layer} | " + " | ".join("-" if v is None else f"{v:.3g}" for v in row_values)
                     + f" | {sum(present) / len(present):.3g} |")
    return lines


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md", "plot": out / "ppl_vs_bits.png",
             "plot_file_mb": out / "ppl_vs_file_mb.png"}
    atomic_write_text(paths["json"], json.dumps(results, indent=2) + "\n")
    if ppl_names(results):
        plot_ppl_vs_bits(results, paths["plot"])
        plot_ppl_vs_bits(results, paths["plot_file_mb"], x="file_mb")
    else:
        paths.pop("plot")
        paths.pop("plot_file_mb")
    atomic_write_text(paths["markdown"], markdown(results))
    return paths
