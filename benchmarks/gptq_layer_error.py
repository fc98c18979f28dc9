"""Does GPTQ overfit its calibration text? Layer-wise output error in-sample vs out-of-sample.

For a few decoder layers, capture the inputs of every linear on calibration windows and on evaluation
windows (full-precision model), fit GPTQ on the calibration Hessian, and compare the relative output
error ||X (W - Q)^T||^2 / ||X W^T||^2 of RTN and GPTQ on both token sets. GPTQ minimizes exactly this
error on the calibration tokens; if its advantage over RTN shrinks or reverses on the evaluation tokens,
the Hessian it fitted does not describe the text it is scored on (overfitting / domain shift).
"evaltok" is the median over evaluation tokens of each token's own relative error (the typical token).
"upstream" scores ||X W^T - X~ Q^T||^2 / ||X W^T||^2 with X~ the inputs the layer gets when every linear
upstream is RTN-quantized (the layer's share of a quantized model's error, upstream noise included);
"weight" is ||W - Q||^2 / ||W||^2: GPTQ buys its lower output error with larger weight changes, which
upstream noise in the inputs' low-variance directions then multiplies.

    python benchmarks/gptq_layer_error.py --model smollm2-135m --calib CALIB --eval EVAL --layers 2,10,20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmbin.data import calibration_windows, evaluation_windows, load_text, token_stream  # noqa: E402
from llmbin.methods.rtn import rtn_format  # noqa: E402
from llmbin.methods.solvers.gptq_loop import gptq_quantize  # noqa: E402
from llmbin.methods.solvers.uniform_quantizer import UniformColumnQuantizer  # noqa: E402
from llmbin.models.loading import load_model  # noqa: E402
from llmbin.models.walk import decoder_layers, find_linears  # noqa: E402


@torch.no_grad()
def capture_inputs(model, windows, names_by_module, last_layer):
    """Inputs [tokens, K] of the chosen linears, running only the decoder layers up to last_layer."""
    prefix, layers = decoder_layers(model)
    kept = layers[:last_layer + 1]
    caught = {n: [] for n in names_by_module.values()}

    def hook(name):
        def fn(_m, inputs):
            caught[name].append(inputs[0].reshape(-1, inputs[0].shape[-1]).float().clone())
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for m, n in names_by_module.items()]
    full = model.model.layers
    model.model.layers = kept
    try:
        for start in range(0, len(windows), 4):
            model.model(input_ids=windows[start:start + 4], use_cache=False)
    finally:
        model.model.layers = full
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in caught.items()}


def rel_error(x, w, q):
    return float(((x @ (w - q).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


def median_token_error(x, w, q):
    """The typical token's relative error: a few tokens with huge activations (the first of each window)
    dominate the summed error, and the Hessian, so the sum can hide what happens to all the others."""
    return float((((x @ (w - q).T) ** 2).sum(1) / ((x @ w.T) ** 2).sum(1).clamp(min=1e-12)).median())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--layers", default="2,10,20")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    started = time.perf_counter()
    model, tok = load_model(args.model)
    calib = calibration_windows(token_stream(tok, load_text(args.calib)), args.nsamples, args.seqlen, 0)
    evalw = evaluation_windows(token_stream(tok, load_text(args.eval, split="evaluation")), args.seqlen, args.eval_windows)
    layer_ids = [int(i) for i in args.layers.split(",")]
    prefix, layers = decoder_layers(model)
    modules = {m: f"{prefix}.{i}.{n}" for i in layer_ids for n, m in find_linears(layers[i]).items()}
    xs_cal = capture_inputs(model, calib, modules, max(layer_ids))
    xs_eval = capture_inputs(model, evalw, modules, max(layer_ids))
    # the same evaluation inputs when every linear upstream is RTN-quantized: what a quantized model feeds a layer
    originals = {m: m.weight.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            for m in find_linears(layer).values():
                m.weight.copy_(rtn_format(m.weight.float(), args.bits, args.group_size).dequantize())
    xs_noisy = capture_inputs(model, evalw, modules, max(layer_ids))
    with torch.no_grad():
        for m, w in originals.items():
            m.weight.copy_(w)
    rows = []
    for module, name in modules.items():
        w, xc, xe = module.weight.detach().float(), xs_cal[name], xs_eval[name]
        h = 2 * xc.T @ xc / xc.shape[0]
        quants = {"rtn": rtn_format(w, args.bits, args.group_size).dequantize()}
        for label, act in (("gptq", False), ("gptq-act", True)):
            quantizer = UniformColumnQuantizer(*w.shape, args.bits, args.group_size)
            quants[label] = gptq_quantize(w, h, quantizer, 128, 0.01, act)[0]
        xn, target = xs_noisy[name], xe @ w.T
        row = {"module": name,
               **{f"{k}_upstream": float(((target - xn @ q.T) ** 2).sum() / (target ** 2).sum()) for k, q in quants.items()},
               **{f"{k}_weight": float(((w - q) ** 2).sum() / (w ** 2).sum()) for k, q in quants.items()}, **{f"{k}_calib": rel_error(xc, w, q) for k, q in quants.items()},
               **{f"{k}_eval": rel_error(xe, w, q) for k, q in quants.items()},
               **{f"{k}_evaltok": median_token_error(xe, w, q) for k, q in quants.items()}}
        rows.append(row)
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    summary = {}
    for part in ("calib", "eval", "evaltok", "upstream", "weight"):
        for k in ("gptq", "gptq-act"):
            ratios = torch.tensor([r[f"{k}_{part}"] / r[f"rtn_{part}"] for r in rows])
            summary[f"{k}/rtn {part} (geo-mean)"] = round(float(ratios.log().mean().exp()), 4)
            summary[f"{k} beats rtn {part} (share of linears)"] = round(float((ratios < 1).float().mean()), 3)
    print(json.dumps(summary, indent=1))
    Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "threads": torch.get_num_threads(),
                                          "loadavg": os.getloadavg(), "seconds": round(time.perf_counter() - started, 1),
                                          "calib_tokens": calib.numel(), "eval_tokens": evalw.numel(),
                                          "summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
