import sys, time, torch, statistics, os
import transformers, llmbin
import torch.nn.functional as F
from llmbin.kernels import cpu
from llmbin.nn import QuantLinear
torch.set_num_threads(2)
path = sys.argv[1]; M = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
isa = sys.argv[3] if len(sys.argv) > 3 else "igemm"
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
seen = {}
for name, mod in m.named_modules():
    if isinstance(mod, QuantLinear):
        key = (mod.meta["out_features"], mod.meta["in_features"], mod.meta.get("format", type(mod).__name__))
        seen.setdefault(key, []).append((name, mod))
tot = 0.0
g = torch.Generator().manual_seed(0)
with torch.inference_mode():
    for key, mods in seen.items():
        name, mod = mods[0]
        st = cpu.prepare_state(mod)
        x = torch.randn(M, key[1], generator=g)
        cpu.lut_matmul(st, x, isa)
        ts = []
        for _ in range(5):
            t = time.perf_counter(); cpu.lut_matmul(st, x, isa); ts.append(time.perf_counter() - t)
        med = statistics.median(ts)
        tot += med * len(mods)
        print(f"{name:40s} {key} x{len(mods)} {med*1e3:8.2f} ms  GMAC/s {key[0]*key[1]*M/med/1e9:6.1f}")
print(f"total products per forward of {M} tokens: {tot:.3f} s")
head = m.lm_head
x = torch.randn(1, M, 576, generator=g)
with torch.inference_mode():
    head(x)
    ts = []
    for _ in range(3):
        t = time.perf_counter(); head(x); ts.append(time.perf_counter() - t)
print(f"head {statistics.median(ts)*1e3:.1f} ms for {M} tokens")
