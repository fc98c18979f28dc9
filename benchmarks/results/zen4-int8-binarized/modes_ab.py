"""In-process A/B of the integer GEMM's activation precision: int16, int8 on binarized channels only, int8
everywhere; every distinct packed layer of a checkpoint at M tokens (auto path), rounds alternating."""
import sys, time, json, statistics, torch, transformers, llmbin
from llmbin.kernels import cpu
from llmbin.kernels.cpu.build import load_extension
from llmbin.nn import QuantLinear
torch.set_num_threads(2)
path, M, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ext = load_extension()
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
seen = {}
for name, mod in m.named_modules():
    if isinstance(mod, QuantLinear):
        key = (mod.meta["out_features"], mod.meta["in_features"], mod.meta.get("format", type(mod).__name__))
        seen.setdefault(key, []).append(mod)
g = torch.Generator().manual_seed(0)
work = [(k, len(v), cpu.prepare_state(v[0]), torch.randn(M, k[1], generator=g)) for k, v in seen.items()]
modes = {"int16": (False, False), "binarized": (False, True), "int8": (True, False)}
res = {k: [] for k in modes}
with torch.inference_mode():
    for r in range(rounds):
        for name in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
            ext.set_int_gemm_int8(modes[name][0]); ext.set_int_gemm_int8_binarized(modes[name][1])
            tot = 0.0; per = []
            for key, n, st, x in work:
                cpu.lut_matmul(st, x)
                t = time.perf_counter(); cpu.lut_matmul(st, x); dt = time.perf_counter() - t; tot += dt * n; per.append((key, dt))
            res[name].append(tot)
            if r == 0: print(name, [(k[:2], round(1e3 * v, 2)) for k, v in per], flush=True)
med = {k: statistics.median(v) for k, v in res.items()}
print(f"M={M} rounds={rounds} median product seconds per forward:", json.dumps({k: round(v, 4) for k, v in med.items()}),
      "ratio int16/binarized %.3f int16/int8 %.3f" % (med["int16"] / med["binarized"], med["int16"] / med["int8"]))
