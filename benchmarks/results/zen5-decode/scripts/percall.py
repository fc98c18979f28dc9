import sys, time, torch
from llmbin.kernels import cpu
from llmbin.nn import QuantLinear
import os; sys.path.insert(0, os.getcwd() + "/tests")
from test_kernels_cpu_gemm import random_uniform
torch.set_num_threads(1)
with torch.inference_mode(), cpu.gemv_threads(2):
    for n, k in [(16, 64), (192, 576), (576, 576), (1536, 576), (576, 1536)]:
        s = cpu.prepare_state(QuantLinear.from_format(random_uniform(n, k, 4, 128)))
        x = torch.randn(1, k)
        op = torch.ops.llmbin_cpu.lut_matmul
        key = s.plan.key
        for _ in range(200): s.plan.forward(x, 0, False)
        best = []
        for r in range(5):
            t = time.perf_counter()
            for _ in range(2000): s.plan.forward(x, 0, False)
            best.append((time.perf_counter() - t) / 2000 * 1e6)
        print(f"{sys.argv[1]} {n}x{k}: {min(best):.2f} us/call (plan.forward from Python, L1/L2-warm)")
