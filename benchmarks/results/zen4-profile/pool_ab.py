"""In one process, alternating every 32 decode tokens: pooled products in fixed equal shares vs shared chunks.
Per mode: decode tokens/s (mean of the alternations) and, per pooled call, the caller's own share and its wait for
the helpers (instrumented build: instrument.patch + a fixed-shares switch)."""
import sys, time, statistics, torch, transformers
import llmbin
from llmbin.kernels import cpu
from llmbin.runtime.decode_bench import static_speed
from llmbin.runtime.decoder import Decoder
torch.set_num_threads(2)
path, rounds = sys.argv[1], int(sys.argv[2])
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = tok("The quick brown fox jumps over the lazy dog. Once upon a time", return_tensors="pt").input_ids
dec = Decoder(m, ids.shape[1] + 32)
ext = cpu.load_extension()
res = {True: [], False: []}
st = {True: [0] * 5, False: [0] * 5}
with torch.inference_mode():
    static_speed(m, ids, 32, decoder=dec)
    for r in range(rounds):
        for fixed in ((True, False) if r % 2 == 0 else (False, True)):
            ext.set_fixed_shares(fixed)
            a = ext.pool_stats()
            res[fixed].append(static_speed(m, ids, 32, decoder=dec)[0]["decode_tokens_per_s"])
            b = ext.pool_stats()
            st[fixed] = [s + y - x for s, x, y in zip(st[fixed], a, b)]
for fixed in (True, False):
    n = st[fixed][0]
    name = "fixed equal shares" if fixed else "shared chunks"
    print(f"{name:20s} decode tok/s mean {statistics.mean(res[fixed]):.1f} median {statistics.median(res[fixed]):.1f} "
          f"(n={len(res[fixed])}); per pooled call: caller's share {st[fixed][1]/n/1e3:.2f} us, wait {st[fixed][2]/n/1e3:.2f} us, "
          f"helper start {st[fixed][3]/n/1e3:.2f} us, helper share {st[fixed][4]/n/1e3:.2f} us")
wins = sum(b > a for a, b in zip(res[True], res[False]))
print(f"shared chunks faster in {wins} of {rounds} paired alternations; ratio of means {statistics.mean(res[False]) / statistics.mean(res[True]):.3f}")
