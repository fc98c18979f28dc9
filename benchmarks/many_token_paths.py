"""Where each many-token path wins: the lookup-table kernel against the per-call dequantization + GEMM (bf16 brgemm
where the CPU has AVX512-BF16, else float32 sgemm), per layer shape and token count, with F.linear float32 and bfloat16 on dense weights beside them (same process,
interleaved rounds, median). The crossover sets LLMBIN_CPU_GEMM_MIN_TOKENS' default (dequant_gemm.h).

    OMP_NUM_THREADS=2 python benchmarks/many_token_paths.py --threads 2 --out benchmarks/results/many-token-paths
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576), (1536, 1536), (8960, 1536), (1536, 8960)]
TOKENS = [2, 4, 8, 16, 32, 64, 128, 512, 2048]


def median_seconds(fns: dict, budget_s: float) -> dict:
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times[next(iter(fns))]) < 3:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per shape and token count")
    ap.add_argument("--kind", default="ptq161", help="layer kind (tests/conftest_kernels.py KINDS) or uniform4")
    ap.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from llmbin.host.environment import cpu_name
    from llmbin.kernels import cpu
    from llmbin.nn import QuantLinear
    from llmbin.runtime.kernel_bench import random_bitplane
    from llmbin.formats import UniformFormat

    ext = cpu.load_extension()
    table_isa = {1: "scalar", 2: "avx2", 3: "avx512"}[ext.best_isa()]
    gemm_isa = "gemm" if ext.gemm_supported() else "sgemm"
    rows = []
    for n, k in SHAPES:
        if args.kind == "uniform4":
            g = torch.Generator().manual_seed(0)
            fmt = UniformFormat(torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32),
                                (torch.rand(n, k // 128, generator=g) * 0.05).half(),
                                torch.randint(0, 16, (n, k // 128), generator=g, dtype=torch.uint8), 4, 128)
        else:
            fmt = random_bitplane(n, k, 1, 128, in_scale=True, perm="mask", k_salient=k // 7,
                                  generator=torch.Generator().manual_seed(0))
        state = cpu.prepare_state(QuantLinear.from_format(fmt))
        w = fmt.dequantize()
        wb = w.bfloat16()
        for m in TOKENS:
            if n * m > 49152 * 512:
                continue
            x = torch.randn(m, k)
            xb = x.bfloat16()
            secs = median_seconds({"lut": lambda: cpu.lut_matmul(state, x, table_isa),
                                   "dequant+gemm": lambda: cpu.lut_matmul(state, x, gemm_isa),
                                   "F.linear fp32": lambda: F.linear(x, w),
                                   "F.linear bf16": lambda: F.linear(xb, wb)}, args.budget)
            row = {"shape": f"{n}x{k}", "tokens": m, **{f"{k_}_us": round(v * 1e6, 1) for k_, v in secs.items()},
                   "winner": min(("lut", "dequant+gemm"), key=secs.get), "loadavg": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(row, flush=True)
    meta = {"command": "python benchmarks/many_token_paths.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), "cpu": cpu_name(), "threads": args.threads,
            "torch": torch.__version__, "kind": args.kind, "table_isa": table_isa, "gemm_isa": gemm_isa, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    cols = ["shape", "tokens", "lut_us", "dequant+gemm_us", "F.linear fp32_us", "F.linear bf16_us", "winner", "loadavg"]
    with open(args.out + ".md", "w") as f:
        f.write(f"# Many-token packed products: lookup tables ({table_isa}) vs dequantize + {gemm_isa} ({args.kind})\n\n"
                f"Command: `{meta['command']}`\n\nCPU: {meta['cpu']}, {args.threads} threads, torch {torch.__version__}, "
                f"{meta['when']}. Median of interleaved calls; microseconds per product.\n\n")
        f.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            f.write("| " + " | ".join(str(r[c]) for c in cols) + " |\n")


if __name__ == "__main__":
    main()
