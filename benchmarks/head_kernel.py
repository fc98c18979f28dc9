"""Output-head GEMV at SmolLM2's shape (49152 x 576, one token): packed uniform int on the cpu backend vs F.linear.

    OMP_NUM_THREADS=1 python benchmarks/head_kernel.py   # prints one markdown row per candidate
Candidates are timed round-robin (llmbin.runtime.kernel_bench._round_robin), median per call, weights hot in cache.
"""
import os

import torch
import torch.nn.functional as F

from llmbin.runtime.kernel_bench import _round_robin
from llmbin.methods.rtn import rtn_format
from llmbin.nn import QuantLinear

N, K = 49152, 576
gen = torch.Generator().manual_seed(0)
w = torch.randn(N, K, generator=gen) * 0.05
x = torch.randn(1, K, generator=gen)
fns = {"F.linear fp32": lambda: F.linear(x, w), "F.linear bf16": (lambda wb, xb: lambda: F.linear(xb, wb))(
    w.bfloat16(), x.bfloat16())}
for label, bits, group in (("int8 per row", 8, -1), ("int4 g64", 4, 64), ("int4 per row", 4, -1)):
    module = QuantLinear.from_format(rtn_format(w, bits, group))
    module.meta["lut"] = True  # as the embedding stage sets it for a packed head
    assert module.backend(torch.float32).name == "cpu"
    module(x)  # prepare
    fns[f"{label} (cpu backend)"] = (lambda m: lambda: m(x))(module)
load = os.getloadavg()[0]
times = _round_robin(fns, budget_s=3.0)
print(f"threads {torch.get_num_threads()}, load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
print("| candidate | ms per token | speedup vs F.linear fp32 |\n|---|---|---|")
for name, t in times.items():
    print(f"| {name} | {t * 1e3:.2f} | {times['F.linear fp32'] / t:.1f}x |")
