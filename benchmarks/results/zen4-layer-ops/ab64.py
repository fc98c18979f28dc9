# pp64 of the packed SmolLM2 (ptq161) with fused layer ops vs transformers' own, alternating call by call, 2 threads
import sys, time, statistics, torch, transformers
torch.set_num_threads(2)
import os
from llmbin.runtime.prefill_bench import prefill_seconds
path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/s45/smol-ptq161"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
fused = {mod: type(mod) for mod in m.modules() if type(mod).__name__.startswith("Fused")}
print("fused modules", len(fused))
plain = {mod: cls.__mro__[2] for mod, cls in fused.items()}
def setc(d):
    for mod, c in d.items(): mod.__class__ = c
res = {"fused": [], "plain": []}
for r in range(12):
    for name, d in (("fused", fused), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("fused", fused)):
        setc(d); t = prefill_seconds(m, n, reps=3); res[name].append(n * len(t) / sum(t))
for k, v in res.items(): print(k, "median", round(statistics.median(v), 1), [round(x) for x in v])
print("ratio of medians", round(statistics.median(res["fused"]) / statistics.median(res["plain"]), 3))
