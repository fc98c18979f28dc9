"""Kernel speed protocol (BENCH.md): packed backends vs F.linear float32/bfloat16, same process, same run.

    python benchmarks/kernel_table.py [--shape 4096x4096 ...] [--batch 1 ...] [--planes 1 ...] [--threads N]

Writes benchmarks/results/kernels-<device>.json (rows + machine info) and kernels-<device>.md
(the table, headed by the exact command).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from llmbin.runtime.kernel_bench import BENCH_BATCHES, BENCH_SHAPES, format_table, run_kernel_bench

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", action="append", help="N x K, e.g. 4096x4096 (default: every BENCH.md shape)")
    ap.add_argument("--batch", action="append", type=int, help=f"batch M (default: {BENCH_BATCHES})")
    ap.add_argument("--planes", action="append", type=int, help="bit planes (default: 1 and 2)")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timing per shape and batch")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shape] if args.shape else BENCH_SHAPES
    device = "cuda" if torch.cuda.is_available() else "cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = run_kernel_bench(shapes, args.batch or BENCH_BATCHES, tuple(args.planes or (1, 2)),
                            RESULTS / f"kernels-{device}.json", group=args.group_size, device=device,
                            budget_s=args.budget)
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    m = rows[0]
    md = [f"# Kernel speed ({device})", "", f"Command: `{command}`", "",
          f"Machine: {m['cpu']}, torch {m['torch']}, {m['threads']} threads, load average "
          f"{m['loadavg_start']:.2f} at start / {m['loadavg_end']:.2f} at end. Median of interleaved rounds "
          "after warm-up; hot caches on CPU. bytes = weights (packed tensors or dense) + fp32 activations in/out.",
          "", format_table(rows), ""]
    (RESULTS / f"kernels-{device}.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
