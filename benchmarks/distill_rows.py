"""Issue 16's rows: each method's protocol-v1 checkpoint before and after `llmbin distill` at its defaults.

    python benchmarks/distill_rows.py --configs gptq2,pbllm [--reuse ptq161=/path/to/checkpoint]

For each configuration (benchmarks/quality.py's CONFIGS) it quantizes SmolLM2-135M with protocol v1's
calibration (or reuses a checkpoint made by exactly that command: --reuse NAME=DIR), scores it, runs
`llmbin distill` on it with the defaults, and scores the result; every command runs under /usr/bin/time -v
(wall time and peak RSS are the process's own). Writes benchmarks/results/distill-rows/NAME.json with the
exact commands, and prints a markdown row.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import CONFIGS, LLMBIN, RESULTS, ROOT, _inspect, timed  # noqa: E402


def score(target: Path, evaltext: str, json_path: Path) -> tuple[float, dict]:
    run = timed([LLMBIN, "eval", str(target), "--ppl", evaltext, "--seqlen", "512", "--max-windows", "128",
                 "--json", str(json_path)])
    return json.loads(json_path.read_text())["perplexity"][0]["ppl"], run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="gptq2,pbllm")
    ap.add_argument("--reuse", action="append", default=[], help="NAME=DIR: a checkpoint quantize already made")
    ap.add_argument("--known-ppl", action="append", default=[],
                    help="NAME=PPL=SOURCE: the reused checkpoint's protocol-v1 perplexity, already measured in SOURCE")
    ap.add_argument("--calib", default=str(ROOT.parent / "shared" / "data" / "calib_coqa.txt"))
    ap.add_argument("--eval", dest="evaltext", default=str(ROOT.parent / "shared" / "data" / "eval_xsum.txt"))
    ap.add_argument("--workdir", default="/tmp/llmbin-distill-rows")
    args = ap.parse_args()
    reuse = dict(item.split("=", 1) for item in args.reuse)
    known = {n: (float(v), src) for n, v, src in (item.split("=", 2) for item in args.known_ppl)}
    work, results = Path(args.workdir), RESULTS / "distill-rows"
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    for name in args.configs.split(","):
        record = {"config": name, "threads": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())),
                  "load_start": os.getloadavg(), "protocol": "v1: 128 x 512 calibration windows seed 0; ppl eval_xsum "
                  "seqlen 512, first 128 windows"}
        if name in reuse:
            packed = Path(reuse[name])
            record["quantize"] = {"reused": str(packed)}
        else:
            packed = work / name
            record["quantize"] = timed([LLMBIN, "quantize", "smollm2-135m", *CONFIGS[name], "--dataset", args.calib,
                                        "--nsamples", "128", "--seqlen", "512", "--seed", "0", "-o", str(packed),
                                        "--overwrite", "-q"])
        record["bits"] = _inspect(packed)["totals"]
        if name in known:
            record["ppl_before"], record["eval_before"] = known[name][0], {"measured_in": known[name][1]}
        else:
            record["ppl_before"], record["eval_before"] = score(packed, args.evaltext, work / f"{name}-eval.json")
        distilled = work / f"{name}-distill"
        record["distill"] = timed([LLMBIN, "distill", str(packed), "-o", str(distilled), "--overwrite", "-q"])
        record["distill_stats"] = json.loads((distilled / "config.json").read_text())["quantization_config"]["distill"]
        record["bits_after"] = _inspect(distilled)["totals"]
        record["ppl_after"], record["eval_after"] = score(distilled, args.evaltext, work / f"{name}-distill-eval.json")
        record["ratio"] = round(record["ppl_after"] / record["ppl_before"], 4)
        record["load_end"] = os.getloadavg()
        (results / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        d = record["distill"]
        print(f"| {name} | {record['bits'].get('bpw_all_in')} | {record['ppl_before']:.2f} | {record['ppl_after']:.2f} | "
              f"{record['ratio']:.3f}x | {d['wall_s']} s | {d['peak_rss_mb']} MB |", flush=True)


if __name__ == "__main__":
    main()
