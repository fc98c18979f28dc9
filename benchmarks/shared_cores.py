"""Does a run slow down only in proportion when it shares the machine? (issue 15: OpenMP wait policy)

The workload is PTQ1.61's block training in miniature: forward + backward of one SmolLM2-shaped decoder
layer (hidden 576, MLP 1536, 9 heads / 3 KV heads, random seeded weights, float32) on 512-token windows,
batch 1, AdamW — the step that took 75% of a quantization run. Each measurement is a fresh process with
OMP_NUM_THREADS=2; "alone" runs one such process on the idle machine, "side by side" starts two at once.

Policies:
  llmbin   - no OMP_WAIT_POLICY in the environment; the workload imports llmbin first, whose import sets
             the default llmbin ships (what `llmbin quantize` runs with);
  active   - OMP_WAIT_POLICY=ACTIVE (threads spin while waiting for work);
  gomp     - no OMP_WAIT_POLICY and llmbin not imported first: libgomp's own default.

    python benchmarks/shared_cores.py [--steps 40] [--out benchmarks/results/shared-cores.md]

A fair share means: side by side, each run takes about 2x its alone time (two runs, two cores); far more
than 2x is the spin-wait pathology.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

POLICIES = ("llmbin", "active", "gomp")


def workload(policy: str, steps: int) -> float:
    if policy == "llmbin":
        import llmbin  # noqa: F401  (its import chooses the wait policy before torch starts OpenMP)
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                      num_hidden_layers=1, max_position_embeddings=512)
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, 0).float()
    rotary = LlamaRotaryEmbedding(cfg)
    x = torch.randn(8, 512, 576)
    target = torch.randn(8, 512, 576)
    pos = torch.arange(512)[None]
    cos_sin = rotary(x[:1], pos)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-5)
    for step in range(steps + 3):
        if step == 3:  # three warm-up steps (allocator, OpenMP pool) are not timed
            start = time.perf_counter()
        i = step % len(x)
        out = layer(x[i:i + 1], position_embeddings=cos_sin, position_ids=pos)
        out = out[0] if isinstance(out, tuple) else out
        loss = (out - target[i:i + 1]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def launch(policy: str, steps: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = "2"
    if policy == "active":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
    return subprocess.Popen([sys.executable, __file__, "--child", policy, "--steps", str(steps)], env=env,
                            stdout=subprocess.PIPE, text=True)


def seconds(procs: list[subprocess.Popen]) -> list[float]:
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit("a workload process failed")
    return [json.loads(o.strip().splitlines()[-1])["seconds"] for o in outs]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--out", default=None, help="append a markdown table here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"policy": args.child, "seconds": round(workload(args.child, args.steps), 2)}), flush=True)
        return
    rows = []
    for policy in args.policies.split(","):
        load = os.getloadavg()[0]
        alone = seconds([launch(policy, args.steps)])[0]
        pair = seconds([launch(policy, args.steps), launch(policy, args.steps)])
        rows.append((policy, load, alone, pair))
        print(f"{policy}: alone {alone:.1f} s, side by side {pair[0]:.1f} / {pair[1]:.1f} s "
              f"({max(pair) / alone:.2f}x)", flush=True)
    table = ["| policy | load before | alone, s | side by side, s (each) | slowdown (slower / alone) |",
             "|---|---|---|---|---|"]
    table += [f"| {p} | {ld:.2f} | {a:.1f} | {b[0]:.1f} / {b[1]:.1f} | {max(b) / a:.2f}x |" for p, ld, a, b in rows]
    text = "\n".join(table)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n`python benchmarks/shared_cores.py --steps {args.steps}` ({time.strftime('%Y-%m-%d %H:%M')}, "
                    f"{os.cpu_count()} cores, OMP_NUM_THREADS=2 per process)\n\n{text}\n")


if __name__ == "__main__":
    main()
