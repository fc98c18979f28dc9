# a real Qwen2 packed checkpoint: logits with fused layer ops against transformers' own (LLMBIN_LAYER_OPS toggled by
# class), and pp64/pp512 alternating call by call, 2 threads
import sys, statistics, torch, transformers, llmbin
from llmbin.runtime.prefill_bench import prefill_seconds
torch.set_num_threads(2)
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
fused = {mod: type(mod) for mod in m.modules() if type(mod).__name__.startswith("Fused")}
plain = {mod: cls.__mro__[2] for mod, cls in fused.items()}
print("fused modules", len(fused), sorted({c.__name__ for c in fused.values()}))
def setc(d):
    for mod, c in d.items(): mod.__class__ = c
ids = torch.randint(0, 30000, (1, 200), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    setc(fused); a = m(ids).logits; setc(plain); b = m(ids).logits
print("max |logit diff|", (a - b).abs().max().item(), "max |logit|", a.abs().max().item(), "argmax equal", (a.argmax(-1) == b.argmax(-1)).float().mean().item())
for n in (64, 512):
    res = {"fused": [], "plain": []}
    for r in range(6):
        for name, d in ((("fused", fused), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("fused", fused))):
            setc(d); t = prefill_seconds(m, n, reps=2); res[name].append(n * len(t) / sum(t))
    print(n, {k: round(statistics.median(v), 1) for k, v in res.items()}, "ratio", round(statistics.median(res["fused"]) / statistics.median(res["plain"]), 3))
