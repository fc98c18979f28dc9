import time, torch, sys
from llmbin.kernels import cpu
from llmbin.nn import QuantLinear
import os; sys.path.insert(0, os.getcwd() + "/tests")
from test_kernels_cpu_gemm import random_uniform
torch.set_num_threads(2)
shapes = [(1536, 1536), (256, 1536), (256, 1536), (1536, 1536), (8960, 1536), (8960, 1536), (1536, 8960)]
mats = []
for i in range(6):
    for n, k in shapes:
        mats.append((cpu.prepare_state(QuantLinear.from_format(random_uniform(n, k, 4, 128))), torch.randn(1, k)))
total = sum(n * k for n, k in shapes) * 6 * 4.5 / 8
with cpu.gemv_threads(2):
    res = []
    for r in range(4):
        for s, x in mats: cpu.lut_matmul(s, x)
        t = time.perf_counter(); n = 0
        while time.perf_counter() - t < 1.0:
            for s, x in mats: cpu.lut_matmul(s, x)
            n += 1
        dt = (time.perf_counter() - t) / n
        res.append(total / dt / 1e9)
    print(sys.argv[1], "6 Qwen-1.5B-like layers M=1: GB/s", " ".join("%.1f" % v for v in res))
