"""Quality protocol v1 (BENCH.md): quantize SmolLM2-135M, score perplexity on held-out text, record everything.

    python benchmarks/quality.py --configs fp,rtn2,gptq2,gptq3 [--calib PATH] [--eval PATH]

Each configuration runs the real CLI under /usr/bin/time -v, so wall time and peak RSS are the
process's own. Writes benchmarks/results/quality-<config>.json (with the exact commands) and
appends a row to benchmarks/results/quality.md.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LLMBIN = str(Path(sys.executable).parent / "llmbin")

CONFIGS = {
    "fp": None,
    "rtn2": ["--method", "rtn", "--bits", "2", "--group-size", "128"],
    "gptq2": ["--method", "gptq", "--bits", "2", "--group-size", "128"],
    "gptq2-g64": ["--method", "gptq", "--bits", "2", "--group-size", "64"],
    "gptq3": ["--method", "gptq", "--bits", "3", "--group-size", "128"],
    "pbllm": ["--recipe", "pbllm-1.7"],
    # the reference's configuration: ratio 0.2, plain signs, grid of the entire row (earlier rows: "ptq161-e5")
    "ptq161-ref-e5": ["--method", "ptq161", "--set", "epochs=5", "--set", "salient_ratio=0.2", "--set", "sign_fix=plain",
                      "--set", "salient_grid=row"],
    "ptq161-e5": ["--method", "ptq161", "--set", "epochs=5"],  # the method's defaults: bpw 1.65, GPTQ signs, salient grid
    "ptq161-recipe-e5": ["--recipe", "ptq161", "--set", "epochs=5"],  # the recipe (bpw 1.65: 1.6425 bits all-in)
    "ptq161-pre": ["--recipe", "ptq161", "--set", "preprocess.enabled=true"],  # PTQ1.61 with preprocessing
    # the same with one block-training epoch in pass 1, so the LoRA starts from a better-quantized model
    "ptq161-pre-p1": ["--recipe", "ptq161", "--set", "preprocess.enabled=true", "--set", "preprocess.pass1_epochs=1"],
    "ptq161-recipe-e10": ["--recipe", "ptq161", "--set", "epochs=10"],  # twice the reference's epochs
    "ptq161": ["--recipe", "ptq161"],
    "dbllm": ["--recipe", "dbllm-2bit"],
}


def timed(cmd: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return {"command": shlex.join(cmd), "wall_s": round(wall, 1), "peak_rss_mb": int(rss.group(1)) // 1024 if rss else None}


def run_config(name: str, calib: str, evaltext: str, model: str, workdir: Path) -> dict:
    protocol = ["--seqlen", "512"]
    record = {"config": name, "model": model, "protocol": "v1 (BENCH.md): 128 x 512 calibration windows seed 0; "
              "ppl gptq protocol seqlen 512, first 128 windows"}
    target = model
    if CONFIGS[name] is not None:
        out = workdir / name
        q = [LLMBIN, "quantize", model, *CONFIGS[name], "--dataset", calib, "--nsamples", "128", *protocol,
             "--seed", "0", "-o", str(out), "--overwrite", "-q"]
        record["quantize"] = timed(q)
        record["bits"] = _inspect(out)["totals"]
        target = str(out)
    ev_json = workdir / f"{name}-eval.json"
    record["eval"] = timed([LLMBIN, "eval", target, "--ppl", evaltext, *protocol, "--max-windows", "128",
                            "--json", str(ev_json)])
    record["ppl"] = json.loads(ev_json.read_text())["perplexity"][0]["ppl"]
    return record


def _inspect(out: Path) -> dict:
    path = out.with_suffix(".inspect.json")
    subprocess.run([LLMBIN, "inspect", str(out), "--json", str(path)], capture_output=True, check=True)
    return json.loads(path.read_text())


def markdown_row(r: dict) -> str:
    bits = r.get("bits", {})
    q = r.get("quantize", {})
    return (f"| {r['config']} | {r['ppl']:.2f} | {bits.get('bpw_paper', '-')} | {bits.get('bpw_all_in', '-')} | "
            f"{q.get('wall_s', '-')} | {q.get('peak_rss_mb', '-')} | `{q.get('command', r['eval']['command'])}` |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="fp,rtn2,gptq2,gptq3", help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--calib", default=str(ROOT.parent / "shared" / "data" / "calib_coqa.txt"))
    ap.add_argument("--eval", dest="evaltext", default=str(ROOT.parent / "shared" / "data" / "eval_xsum.txt"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--workdir", default="/tmp/llmbin-quality")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = RESULTS / "quality.md"
    if not table.exists():
        table.write_text("# Quality protocol v1 on SmolLM2-135M (eval_xsum, seqlen 512, 128 windows)\n\n"
                         "| config | ppl | bits paper | bits all-in | quantize wall s | quantize peak RSS MB | command |\n"
                         "|---|---|---|---|---|---|---|\n")
    for name in args.configs.split(","):
        record = run_config(name, args.calib, args.evaltext, args.model, workdir)
        (RESULTS / f"quality-{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        with table.open("a") as f:
            f.write(markdown_row(record) + "\n")
        print(markdown_row(record), flush=True)


if __name__ == "__main__":
    main()
