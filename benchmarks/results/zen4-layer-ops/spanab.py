"""pp-N of a packed checkpoint with the integer GEMM's activation scale per span of A blocks of 32 against B blocks
(LLMBIN_CPU_GEMM_SPAN), alternating call by call in one process (mean of 3 prefills each), 2 threads.
    python spanab.py CHECKPOINT [N=64] [A=4] [B=1] [ROUNDS=10]"""
import sys, statistics, torch, transformers, llmbin
from llmbin.kernels.cpu.build import load_extension
from llmbin.runtime.prefill_bench import prefill_seconds
torch.set_num_threads(2)
ext = load_extension()
path = sys.argv[1]
n, a, b, rounds = (int(v) for v in (sys.argv[2:] + ["64", "4", "1", "10"][len(sys.argv) - 2:])[:4])
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
res = {a: [], b: []}
for r in range(rounds):
    for sp in ((a, b) if r % 2 == 0 else (b, a)):
        ext.set_gemm_span(sp); t = prefill_seconds(m, n, reps=3); res[sp].append(n * len(t) / sum(t))
for k, v in res.items(): print(path, f"pp{n} span", k, "median", round(statistics.median(v), 1), [round(x) for x in v])
print(path, "ratio", round(statistics.median(res[a]) / statistics.median(res[b]), 3))
