"""Paired decode and prefill timing: llmbin's compiled static decode and prefill against llama.cpp's llama-bench, alternating round by round.

This VM's speed drifts by 10-20% from one minute to the next, for both programs alike; timing each once, minutes
apart, compares the drift. Here the llmbin model stays loaded and compiled, and every round times one 128-token
greedy decode (llmbin.runtime.decode_bench.static_speed: the path of `llmbin generate` and `llmbin bench`) and, right after,
one `llama-bench -n 128 -p 0 -r 1` per GGUF, so each pair runs seconds apart. Between its decodes the llmbin
process is idle (the kernel's helper threads block 5 ms after the last matmul). With --prefill N (default 64; 0
skips it) every round also times a prefill of N random tokens both ways, seconds apart: llmbin's mean of 3 forwards
after a warm-up (llmbin.runtime.prefill_bench, what `llmbin bench` reports) against `llama-bench -p N -n 0 -r 3`.

    OMP_NUM_THREADS=2 python benchmarks/decode_vs_llamacpp.py CHECKPOINT --llama-bench PATH/llama-bench \
        --gguf smol-Q4_0.gguf --rounds 10 --threads 2 --json OUT.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import torch

# llama-bench gets the caller's environment: `import llmbin` sets OMP_WAIT_POLICY=PASSIVE for its own process, and
# llama.cpp's OpenMP threads under PASSIVE sleep between ops (54 instead of ~220 tokens/s here)
CALLER_ENV = dict(os.environ)


def llama_tg(binary: str, gguf: str, threads: int, tokens: int) -> float:
    out = subprocess.run([binary, "-m", gguf, "-t", str(threads), "-p", "0", "-n", str(tokens), "-r", "1", "-o", "json"],
                         check=True, capture_output=True, text=True, env=CALLER_ENV).stdout
    return float(json.loads(out)[0]["avg_ts"])


def llama_pp(binary: str, gguf: str, threads: int, tokens: int) -> float | None:
    """None when llama-bench's prompt run dies (seen: SIGILL in its AMX path on a KVM Xeon); the row says so."""
    proc = subprocess.run([binary, "-m", gguf, "-t", str(threads), "-p", str(tokens), "-n", "0", "-r", "3", "-o", "json"],
                          capture_output=True, text=True, env=CALLER_ENV)
    if proc.returncode != 0:
        print(f"llama-bench -p {tokens} failed (exit status {proc.returncode}); no llama.cpp prefill this round", flush=True)
        return None
    return float(json.loads(proc.stdout)[0]["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--gguf", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=64, help="prompt tokens of the paired prefill (0: decode only)")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    from llmbin.api import load
    from llmbin.host.environment import cpu_name
    from llmbin.runtime.decode_bench import PROMPT, static_speed
    from llmbin.runtime.decoder import Decoder
    from llmbin.runtime.prefill_bench import prefill_seconds

    torch.set_num_threads(args.threads)
    model, tok = load(args.checkpoint, "cpu", torch.float32)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    decoder = Decoder(model, ids.shape[1] + args.tokens)  # one decoder: the step compiles (or loads) once
    static_speed(model, ids, 8, decoder=decoder)
    rows = []
    for r in range(args.rounds):
        speed, tokens = static_speed(model, ids, args.tokens, decoder=decoder)
        row = {"round": r + 1, "llmbin": round(speed["decode_tokens_per_s"], 2), "loadavg": os.getloadavg()[0]}
        for gguf in args.gguf:
            row[os.path.basename(gguf)] = round(llama_tg(args.llama_bench, gguf, args.threads, args.tokens), 2)
        if args.prefill:
            times = prefill_seconds(model, args.prefill)
            row[f"llmbin_pp{args.prefill}"] = round(args.prefill * len(times) / sum(times), 2)
            for gguf in args.gguf:
                row[f"{os.path.basename(gguf)}_pp{args.prefill}"] = round(
                    llama_pp(args.llama_bench, gguf, args.threads, args.prefill), 2)
        rows.append(row)
        print(row, flush=True)
    summary = {"llmbin_mean": round(statistics.mean(r["llmbin"] for r in rows), 2),
               "llmbin_median": round(statistics.median(r["llmbin"] for r in rows), 2)}
    for gguf in args.gguf:
        name = os.path.basename(gguf)
        summary[f"{name}_mean"] = round(statistics.mean(r[name] for r in rows), 2)
        summary[f"{name}_median"] = round(statistics.median(r[name] for r in rows), 2)
        summary[f"rounds_llmbin_ahead_of_{name}"] = sum(r["llmbin"] >= r[name] for r in rows)
        if args.prefill:
            pp, mine = f"{name}_pp{args.prefill}", f"llmbin_pp{args.prefill}"
            summary[f"{mine}_mean"] = round(statistics.mean(r[mine] for r in rows), 2)
            theirs = [r[pp] for r in rows if r[pp] is not None]
            summary[f"{pp}_mean"] = round(statistics.mean(theirs), 2) if theirs else None
            summary[f"prefill_rounds_llmbin_ahead_of_{name}"] = sum(r[pp] is not None and r[mine] >= r[pp] for r in rows)
    result = {"checkpoint": args.checkpoint, "threads": args.threads, "tokens": args.tokens, "cpu": cpu_name(),
              "prefill_tokens": args.prefill,
              "decode_threads": speed.get("decode_threads"), "torch": torch.__version__,
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows, "summary": summary}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
