"""Screen GPTQ settings against RTN cheaply: one calibration pass, many quantizations, one perplexity each.

The Hessians of every decoder linear are collected ONCE from the full-precision model (inputs of the
unquantized layers: "non-sequential" GPTQ, not what `llmbin quantize` does, which feeds each layer
the outputs of the already-quantized ones). Each configuration then quantizes every linear from the
original weights with those Hessians, is scored on the first evaluation windows, and is undone.
That makes a configuration cost its column loops plus one evaluation instead of a whole pipeline
run, which is what a 2-core machine can afford for a screen; confirm the winner with `llmbin compare`.

Config names: METHOD[-bB][-gG][-act][-dDAMP][-static][-mse], e.g. rtn-g128, gptq-b3-g64-act, gptq-g128-d0.1.

    python benchmarks/gptq_screen.py --model qwen2.5-coder-0.5b --calib CODE_CALIB --eval CODE_EVAL \
        --nsamples 32 --max-windows 16 --configs fp,rtn-g128,gptq-g128,gptq-g128-act -o screen.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmbin.data import calibration_windows, load_text, token_stream  # noqa: E402
from llmbin.eval.ppl import perplexity  # noqa: E402
from llmbin.methods.rtn import rtn_format  # noqa: E402
from llmbin.methods.solvers.gptq_loop import gptq_quantize  # noqa: E402
from llmbin.methods.solvers.uniform_quantizer import UniformColumnQuantizer  # noqa: E402
from llmbin.models.loading import load_model  # noqa: E402
from llmbin.models.walk import decoder_layers, find_linears  # noqa: E402


def parse_config(name: str) -> dict:
    method, *tokens = name.split("-")
    cfg = {"name": name, "method": method, "bits": 4, "group_size": 128, "act_order": False, "percdamp": 0.01,
           "static_groups": False, "fit": "minmax"}
    for t in tokens:
        if t == "mse":
            cfg["fit"] = "mse"
        elif t == "act":
            cfg["act_order"] = True
        elif t == "static":
            cfg["static_groups"] = True
        elif t[0] in "bgd":
            cfg[{"b": "bits", "g": "group_size", "d": "percdamp"}[t[0]]] = (float if t[0] == "d" else int)(t[1:])
        else:
            raise SystemExit(f"unknown config token {t!r} in {name}")
    return cfg


@torch.no_grad()
def collect_hessians(model, windows: torch.Tensor, batch_size: int) -> tuple[dict, dict]:
    """-> ({linear name: H = 2/n X^T X}, {linear name: name whose H it shares (same input tensor)})."""
    prefix, layers = decoder_layers(model)
    linears = {f"{prefix}.{i}.{n}": m for i, layer in enumerate(layers) for n, m in find_linears(layer).items()}
    hessians, owner, previous = {}, {}, {"name": None, "input": None}

    def hook(name):
        def fn(_module, inputs):
            x = inputs[0]
            if name not in owner:  # linears called back to back on the very same tensor (q/k/v, gate/up) share H
                same = previous["input"] is x
                owner[name] = owner[previous["name"]] if same else name
            previous["name"], previous["input"] = name, x  # holding x keeps its memory from being reused
            if owner[name] != name:
                return
            x = x.reshape(-1, x.shape[-1]).float()
            h = hessians.setdefault(name, torch.zeros(x.shape[1], x.shape[1]))
            h.addmm_(x.T, x, alpha=2.0)
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        for start in range(0, len(windows), batch_size):
            previous["name"], previous["input"] = None, None
            model.model(input_ids=windows[start:start + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    tokens = windows.numel()
    for h in hessians.values():
        h /= tokens
    return {n: hessians[owner[n]] for n in linears}, {n: linears[n] for n in linears}


def quantize_weight(cfg: dict, weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    if cfg["method"] == "rtn":
        return rtn_format(weight, cfg["bits"], cfg["group_size"], cfg["fit"]).dequantize()
    quantizer = UniformColumnQuantizer(*weight.shape, cfg["bits"], cfg["group_size"], cfg["fit"], torch.diag(hessian))
    q, _ = gptq_quantize(weight, hessian, quantizer, 128, cfg["percdamp"], cfg["act_order"], cfg["static_groups"])
    return q


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True, help="comma-separated evaluation texts")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--configs", required=True)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    windows = calibration_windows(token_stream(tokenizer, load_text(args.calib)), args.nsamples, args.seqlen, args.seed)
    t0 = time.perf_counter()
    hessians, linears = collect_hessians(model, windows, args.batch_size)
    record = {"command": " ".join(["python", *sys.argv]), "threads": torch.get_num_threads(),
              "uptime_start": os.getloadavg(), "machine": platform.processor() or platform.machine(),
              "model": args.model, "calib": args.calib, "nsamples": args.nsamples, "seqlen": args.seqlen,
              "seed": args.seed, "max_windows": args.max_windows, "hessian_seconds": round(time.perf_counter() - t0, 1),
              "hessians": "full-precision inputs (non-sequential)", "rows": []}
    print(f"hessians of {len(linears)} linears in {record['hessian_seconds']} s", flush=True)
    originals = {n: m.weight.detach().clone() for n, m in linears.items()}
    for name in args.configs.split(","):
        cfg = parse_config(name) if name != "fp" else {"name": "fp", "method": "fp"}
        t0 = time.perf_counter()
        with torch.no_grad():
            for n, m in linears.items():
                m.weight.copy_(originals[n] if cfg["method"] == "fp" else quantize_weight(cfg, originals[n], hessians[n]))
        quant_s = round(time.perf_counter() - t0, 1)
        ppl = [perplexity(model, tokenizer, s, args.seqlen, args.max_windows) for s in args.eval.split(",")]
        row = {**cfg, "quantize_seconds": quant_s, "ppl": {p["name"]: round(p["ppl"], 3) for p in ppl},
               "eval_seconds": round(sum(p["seconds"] for p in ppl), 1)}
        record["rows"].append(row)
        print(json.dumps(row), flush=True)
        record["uptime_end"] = os.getloadavg()
        record["total_seconds"] = round(time.perf_counter() - started, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
