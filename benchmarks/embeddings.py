"""File size and perplexity of one quantized model with each embedding/head setting (issue 17).

The decoder layers are quantized once (api.quantize with pipeline.embeddings=none); every setting
then runs the embedding stage (llmbin/calibrate/embeddings.py) on a copy of that packed model, writes a full
checkpoint, loads it back with llmbin.load and scores it under the same perplexity protocol. So the
rows differ only in the embedding/head setting.

    python benchmarks/embeddings.py --recipe ptq161-demo --dataset /work/shared/data/calib_coqa.txt \
        --settings none,int8,int4 --ppl /work/shared/data/eval_xsum.txt --seqlen 512 --max-windows 128 \
        --out /tmp/llmbin-emb --json benchmarks/results/size-ptq161-demo.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

import llmbin
from llmbin.api import QuantizedModel, evaluate_ppl
from llmbin.recipe.run import _unquantized_linears, calibration_ids
from llmbin.calibrate.embeddings import quantize_embeddings
from llmbin.checkpoint.size import model_size
from llmbin.calibrate.quant_log import QuantLog
from llmbin.recipe import Recipe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--recipe", default="ptq161-demo")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--settings", default="none,int8,int4")
    ap.add_argument("--ppl", required=True)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-windows", type=int, default=128)
    ap.add_argument("--out", required=True, help="directory for the checkpoints (one per setting)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--size-only", action="store_true", help="write the checkpoints and measure them; no perplexity")
    args = ap.parse_args()

    recipe = Recipe.load(args.recipe)
    recipe.set("calibration.dataset", args.dataset)
    for item in args.overrides:
        key, _, value = item.partition("=")
        recipe.set(key, value)
    recipe.set("pipeline.embeddings", "none")
    start = time.perf_counter()
    base = llmbin.quantize(args.model, recipe, verbose=False)
    quantize_s = time.perf_counter() - start
    windows, _ = calibration_ids(base.model, base.tokenizer, recipe)
    rows = {"model": args.model, "recipe": recipe.to_dict(), "quantize_seconds": round(quantize_s, 1),
            "threads": torch.get_num_threads(), "load_start": os.getloadavg(), "eval": {
                "ppl": args.ppl, "seqlen": args.seqlen, "max_windows": args.max_windows}, "rows": []}
    for setting in args.settings.split(","):
        model = copy.deepcopy(base.model)
        r = copy.deepcopy(recipe)
        r.set("pipeline.embeddings", setting)
        log = QuantLog(verbose=False)
        t = time.perf_counter()
        record = quantize_embeddings(model, r.pipeline, windows, log)
        stage_s = time.perf_counter() - t
        info = {**base.info, "recipe": r.to_dict(), "embeddings": record,
                "skipped_modules": sorted(_unquantized_linears(model, base.results))}
        out = Path(args.out) / setting
        QuantizedModel(model, base.tokenizer, r, base.results, info, log, base.fingerprint).save(out, overwrite=True)
        del model
        size = model_size(out, json.loads((out / "config.json").read_text())["quantization_config"])
        row = {"setting": setting, **size, "stage_seconds": round(stage_s, 1), "stage_log": log.records,
               "checkpoint": str(out)}
        if not args.size_only:
            loaded, tokenizer = llmbin.load(out)
            t = time.perf_counter()
            row["ppl"] = evaluate_ppl(loaded, tokenizer, [args.ppl], args.seqlen, args.max_windows)[0]["ppl"]
            row["eval_seconds"] = round(time.perf_counter() - t, 1)
            del loaded
        rows["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "stage_log"}), flush=True)
        rows["load_end"] = os.getloadavg()
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
