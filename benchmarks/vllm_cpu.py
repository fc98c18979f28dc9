"""llmbin checkpoints served by vLLM on CPU against the same models unquantized in vLLM, and llmbin's own decoder.

    .venv-vllm/bin/python benchmarks/vllm_cpu.py all --pair smollm2 FLOAT_DIR PACKED_DIR [--pair ...] --out DIR
    .venv-vllm/bin/python benchmarks/vllm_cpu.py greedy PACKED_DIR --json FILE   # vLLM vs `llmbin generate`

`all` runs every row in a fresh process (so start-up and peak RSS are each engine's own) one after the other:
- vLLM rows (`serve`): `LLM(dir, dtype)` in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, KV cache 1 GiB), warmed
  with one request, then time to first token (a 1-token request: prefill + first token, median of 5), batch-1
  decode (one 128-token request: 127 tokens over its time after the first token, median of 3), and 16 concurrent
  requests of 128 new tokens each (all generated tokens over the wall time, median of 2); EOS ignored;
- llmbin rows (`own`, run by llmbin's venv): llmbin's Decoder as `llmbin generate` runs it (static KV cache, step
  compiled for packed models), 128 tokens; batch 1 only.
Every row carries the threads it ran on and the machine line. `greedy` serves the packed checkpoint in float32 and
compares 8 prompts x 64 greedy tokens with `llmbin generate --no-compile` run on each prompt; at a divergence it shows
the gap between the top two log-probabilities of llmbin's transformers path there (acceptable below 1e-3).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLMBIN_PY = ROOT / ".venv/bin/python"
NEW = 128
PROMPT = "The history of the city begins"
BATCH_PROMPTS = [f"Write a short story about {topic}." for topic in (
    "a lighthouse keeper", "a lost key", "the first snow", "a robot gardener", "an old map", "a night train",
    "a silent orchestra", "a paper boat", "the last bookshop", "a mountain village", "a clockmaker", "a desert well",
    "a forgotten song", "a city of bridges", "a winter market", "a kite festival")]
GREEDY_PROMPTS = ["The capital of France is", "def quicksort(items):", "The three primary colors are",
                  "Once upon a time, a small fox", "To make a cup of tea, first", "The theory of relativity states",
                  "Here is a haiku about autumn:", "The largest planet in the solar system is"]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def serve_row(model: str, dtype: str, eager: bool) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=model, dtype=dtype, enforce_eager=eager, max_model_len=1024, seed=0, max_num_seqs=16)
    startup = time.perf_counter() - start
    def run(prompts, n):
        return llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), use_tqdm=False)

    run([PROMPT], 8)  # warm-up: first request's one-off work is not timed
    ttft = statistics.median(timed(lambda: run([PROMPT], 1)) for _ in range(5))
    one = statistics.median(timed(lambda: run([PROMPT], NEW)) for _ in range(3))
    many = statistics.median(timed(lambda: run(BATCH_PROMPTS, NEW)) for _ in range(2))
    gemv = _gemv_threads()
    return {"engine": "vllm", "compiled": not eager, "dtype": dtype, "startup_s": round(startup, 1),
            "ttft_ms": round(1000 * ttft, 1), "decode_tokens_per_s": round((NEW - 1) / (one - ttft), 1),
            "concurrent16_tokens_per_s": round(len(BATCH_PROMPTS) * NEW / many, 1), "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(), "gemv_threads": gemv,
            "omp_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")}


def _gemv_threads():
    if "llmbin.kernels.cpu" not in sys.modules:
        return None  # a float model: no packed product ran
    from llmbin.kernels.cpu import load_extension

    return load_extension().gemv_threads()


OWN = r"""
import json, resource, sys, torch
from llmbin.checkpoint.reader import load_any
from llmbin.runtime.decode_bench import decode_rows
model, tok = load_any(sys.argv[1])
row = decode_rows("x", model.eval(), tok, int(sys.argv[2]), sys.argv[3], paths=("static",))[0]
row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(row))
"""


def own_row(model: str) -> dict:
    """llmbin's decoder, in llmbin's own venv (its transformers), as `llmbin generate` runs it."""
    out = subprocess.run([str(LLMBIN_PY), "-c", OWN, model, str(NEW), PROMPT], capture_output=True, text=True,
                         timeout=1800, check=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    return {"engine": "llmbin", "compiled": row.get("compile_s") is not None, "dtype": "float32",
            "ttft_ms": round(1000 * row["prompt_tokens"] / row["prefill_tokens_per_s"], 1),
            "decode_tokens_per_s": row["decode_tokens_per_s"], "concurrent16_tokens_per_s": None,
            "peak_rss_mb": row["peak_rss_mb"], "torch_threads": row["threads"],
            "gemv_threads": row.get("decode_threads"), "path": row["path"], "compile_s": row.get("compile_s")}


def one(args) -> None:
    """A single row, in this process (called by `all` through a subprocess)."""
    row = own_row(args.model) if args.engine == "llmbin" else serve_row(args.model, args.dtype, args.eager)
    from llmbin.host.environment import machine_line

    print(json.dumps({**row, "machine": machine_line(), "load_avg": round(os.getloadavg()[0], 2)}))


def all_rows(args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, float_dir, packed_dir in args.pair:
        plan = [(kind, model, "vllm", eager) for eager in (False, True)
                for kind, model in (("float", float_dir), ("llmbin-packed", packed_dir))]
        for kind, model, engine, eager in plan + [("llmbin-packed", packed_dir, "llmbin", False)]:
            dtype = args.dtype if engine == "vllm" else None
            command = [sys.executable, __file__, "one", model, "--engine", engine, "--dtype", dtype or "float32"]
            command += ["--eager"] if eager else []
            print("$", " ".join(command), flush=True)
            proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            log = args.out / "logs" / f"{name}-{kind}-{engine}{'-eager' if eager else ''}.log"
            log.parent.mkdir(exist_ok=True)
            log.write_text(proc.stdout + proc.stderr)
            if proc.returncode:
                print(f"FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
                continue
            row = {"model": name, "weights": kind, "dir": model, "command": " ".join(command),
                   **json.loads(proc.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "table.md").write_text(table(rows))
    print(table(rows))


COLS = ["model", "weights", "engine", "compiled", "dtype", "startup_s", "ttft_ms", "decode_tokens_per_s",
        "concurrent16_tokens_per_s", "peak_rss_mb", "torch_threads", "gemv_threads"]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    return "\n".join(lines + ["| " + " | ".join(str(r.get(c, "")) for c in COLS) + " |" for r in rows]) + "\n"


REFERENCE = r"""
import json, sys, torch
from llmbin.runtime.decoder import Decoder
from llmbin.runtime.prompt import encode_prompt, load_for_generation, stop_token_ids, TextStream
from llmbin.runtime.sampling import Sampler
model, tok = load_for_generation(sys.argv[1])
rows = []
for prompt in json.loads(sys.argv[3]):
    ids = encode_prompt(tok, prompt, False)
    tokens = list(Decoder(model, ids.shape[1] + int(sys.argv[2]), compile=False).stream(
        ids, int(sys.argv[2]), Sampler(), stop_token_ids(model, tok)))
    with torch.no_grad():  # every step's distribution, teacher-forced through the transformers forward
        logits = model(torch.cat([ids, torch.tensor([tokens])], 1)).logits[0, ids.shape[1] - 1:-1].float()
    top = torch.topk(torch.log_softmax(logits, -1), 2).values
    stream = TextStream(tok)
    rows.append({"tokens": tokens, "text": "".join(stream.push(t) for t in tokens),
                 "gaps": (top[:, 0] - top[:, 1]).tolist()})
print(json.dumps(rows))
"""


def greedy(args) -> None:
    """Acceptance: vLLM's greedy tokens against `llmbin generate --no-compile` (8 prompts x 64 tokens, float32)."""
    from vllm import LLM, SamplingParams

    prompts, n = GREEDY_PROMPTS, args.tokens
    cli = [subprocess.run([str(LLMBIN_PY), "-m", "llmbin.cli", "generate", args.model, "--prompt", p,
                           "--max-new-tokens", str(n), "--no-compile"], capture_output=True, text=True, timeout=900,
                          check=True).stdout.removesuffix("\n") for p in prompts]
    ref = json.loads(subprocess.run([str(LLMBIN_PY), "-c", REFERENCE, args.model, str(n), json.dumps(prompts)],
                                    capture_output=True, text=True, timeout=900, check=True).stdout.splitlines()[-1])
    llm = LLM(model=args.model, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=n, logprobs=2), use_tqdm=False)
    rows = []
    for prompt, text, want, out in zip(prompts, cli, ref, outs):
        got = list(out.outputs[0].token_ids)
        step = next((i for i, (a, b) in enumerate(zip(want["tokens"], got)) if a != b),
                    None if len(got) == len(want["tokens"]) else min(len(got), len(want["tokens"])))
        row = {"prompt": prompt, "llmbin_generate": text, "vllm": out.outputs[0].text, "same_tokens": step is None,
               "reference_matches_cli": want["text"] == text, "tokens": len(want["tokens"])}
        if step is not None and step < min(len(got), len(want["tokens"])):
            top2 = sorted(out.outputs[0].logprobs[step].values(), key=lambda lp: -lp.logprob)[:2]
            row.update(diverges_at=step, llmbin_token=want["tokens"][step], vllm_token=got[step],
                       reference_top2_gap=want["gaps"][step], vllm_top2_gap=top2[0].logprob - top2[1].logprob,
                       near_tie=want["gaps"][step] < 1e-3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    ok = all(r["reference_matches_cli"] and (r["same_tokens"] or r.get("near_tie")) for r in rows)
    result = {"model": args.model, "prompts": len(rows), "new_tokens": n, "accepted": ok,
              "identical": sum(r["same_tokens"] for r in rows), "rows": rows, "command": " ".join(sys.argv)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"{result['identical']}/{len(rows)} identical, accepted: {ok}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("all")
    a.add_argument("--pair", nargs=3, action="append", metavar=("NAME", "FLOAT_DIR", "PACKED_DIR"), required=True)
    a.add_argument("--dtype", default="bfloat16")
    a.add_argument("--out", type=Path, required=True)
    o = sub.add_parser("one")
    o.add_argument("model")
    o.add_argument("--engine", choices=["vllm", "llmbin"], default="vllm")
    o.add_argument("--dtype", default="bfloat16")
    o.add_argument("--eager", action="store_true")
    g = sub.add_parser("greedy")
    g.add_argument("model")
    g.add_argument("--tokens", type=int, default=64)
    g.add_argument("--json", default=None)
    args = ap.parse_args()
    {"all": all_rows, "one": one, "greedy": greedy}[args.command](args)


if __name__ == "__main__":
    main()
