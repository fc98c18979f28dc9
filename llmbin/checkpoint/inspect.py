"""`llmbin inspect`: what a packed checkpoint stores, module by module, and what would run it."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..formats import format_from_meta
from ..kernels import select_backend
from .embeddings import packed_embedding_modules
from .reader import read_quant_config, shard_files
from .size import describe, model_size
from .validation import read_headers

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4, "int16": 2, "uint8": 1, "int8": 1, "int64": 8,
          "float64": 8, "bool": 1}


def inspect_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    qc = read_quant_config(path)
    files = shard_files(path)
    headers = read_headers(files)
    rows, total_bytes, total_weights, total_paper = [], 0, 0, 0.0
    embedding_modules = packed_embedding_modules(qc.get("embeddings"))
    for name, meta in {**qc["modules"], **embedding_modules}.items():
        cls = format_from_meta(meta)
        nbytes = 0
        for tensor in cls.expected_tensors(meta):
            dtype, shape, _ = headers[f"{name}.{tensor}"]
            nbytes += _BYTES[dtype] * int(torch.tensor(shape).prod().item() if shape else 1)
        n = meta["out_features"] * meta["in_features"]
        rejected: list[str] = []
        backend = select_backend(meta, torch.device("cpu"), torch.float32, explain=rejected)
        row = {"module": name, "format": meta["format"], "shape": [meta["out_features"], meta["in_features"]],
               "bits_paper": meta["paper_bits"], "bits_all_in": round(8 * nbytes / n, 4), "bytes": nbytes,
               "backend_cpu": backend.name}
        if meta.get("format") == "bitplane" and meta.get("k_salient"):  # PTQ1.61: the chosen salient share
            row["salient_ratio"] = round(meta["k_salient"] / meta["in_features"], 4)
        form = meta.get("salient_form") or ("sparse" if meta.get("sparse_nnz") is not None else None)
        if form:
            row["salient_form"] = form
        if name in embedding_modules:  # reported, but not part of the linears' bits per weight
            row["role"] = "embedding"
            rows.append(row)
            continue
        rows.append(row)
        total_bytes += nbytes
        total_weights += n
        total_paper += meta["paper_bits"] * n
    tied = [f"{e['module']} (tied to {e['tied_to']})" for e in [(qc.get("embeddings") or {}).get("output")]
            if e and "tied_to" in e]
    return {"path": str(path), "method": qc.get("recipe", {}).get("method"), "modules": rows,
            "whole_model": model_size(path, qc), "tied": tied, "storage_dtype": qc.get("storage_dtype"),
            "format_version": qc.get("format_version"),
            "totals": {"modules": len(rows) - len(embedding_modules),
                       "bpw_paper": round(total_paper / max(total_weights, 1), 4),
                       "bpw_all_in": round(8 * total_bytes / max(total_weights, 1), 4),
                       "quantized_bytes": total_bytes, "quantized_fp16_bytes": 2 * total_weights,
                       "file_bytes": sum(os.path.getsize(f) for f in files)},
            "skipped_modules": qc.get("skipped_modules", [])}


def render(report: dict) -> str:
    lines = [f"{report['path']}  (method {report['method']})",
             f"{'module':48s} {'format':9s} {'shape':>12s} {'paper':>6s} {'all-in':>7s} {'bytes':>9s}  backend(cpu)"]
    for r in report["modules"]:
        shape = "x".join(map(str, r["shape"]))
        extras = ("  salient: " + r["salient_form"] if "salient_form" in r else "") + (
            f"  salient ratio {r['salient_ratio']}" if "salient_ratio" in r else "")
        lines.append(f"{r['module']:48s} {r['format']:9s} {shape:>12s} {r['bits_paper']:6.3f} {r['bits_all_in']:7.3f} "
                     f"{r['bytes']:9d}  {r['backend_cpu']}{extras}{'  (' + r['role'] + ')' if 'role' in r else ''}")
    t = report["totals"]
    lines.append(f"decoder linears: {t['modules']} modules, bpw_paper {t['bpw_paper']}, bpw_all_in {t['bpw_all_in']}, "
                 f"quantized {t['quantized_bytes'] / 2**20:.2f} MiB (float16 {t['quantized_fp16_bytes'] / 2**20:.2f} MiB)")
    if report["tied"]:
        lines.append(f"tied, stored once: {', '.join(report['tied'])}")
    if report["skipped_modules"]:
        lines.append(f"full precision: {', '.join(report['skipped_modules'])}")
    if report.get("storage_dtype"):
        lines.append(f"unquantized tensors stored as {report['storage_dtype']} (the source's dtype)")
    lines.append(f"whole model: {describe(report['whole_model'])}")
    return "\n".join(lines)
