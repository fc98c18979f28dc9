# decode time split: whole compiled decode step vs the packed products alone (M=1, same order, from DRAM)
import sys, time, torch, transformers
import llmbin
from llmbin.kernels import cpu
from llmbin.nn.packed import PackedMatrix
from llmbin.runtime.decode_bench import static_speed
from llmbin.runtime.decoder import Decoder
torch.set_num_threads(2)
path = sys.argv[1]
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = tok("The quick brown fox jumps over the lazy dog. Once upon a time", return_tensors="pt").input_ids
dec = Decoder(m, ids.shape[1] + 128)
with torch.inference_mode():
    static_speed(m, ids, 128, decoder=dec)
    r = [static_speed(m, ids, 128, decoder=dec)[0]["decode_tokens_per_s"] for _ in range(3)]
mats = [mod for mod in m.modules() if isinstance(mod, PackedMatrix)]
states = [mod.prepare(torch.float32)[1] for mod in mats]
xs = [torch.randn(1, mod.in_features) for mod in mats]
nbytes = sum(sum(b.nbytes for b in mod.buffers(recurse=False)) for mod in mats)
with torch.inference_mode(), cpu.gemv_threads(2):
    torch.set_num_threads(1)
    for s, x in zip(states, xs): cpu.lut_matmul(s, x)
    ts = []
    for _ in range(50):
        t = time.perf_counter()
        for s, x in zip(states, xs): cpu.lut_matmul(s, x)
        ts.append(time.perf_counter() - t)
    ts.sort(); prod = ts[len(ts) // 2]
    # per-matrix: which dominate
    per = []
    for mod, s, x in zip(mats, states, xs):
        t = time.perf_counter()
        for _ in range(20): cpu.lut_matmul(s, x)
        per.append(((time.perf_counter() - t) / 20, mod.out_features, mod.in_features))
print(f"{sys.argv[-1]} decode tok/s {' '.join('%.1f' % v for v in r)} = {1000 / (sum(r) / len(r)):.3f} ms/token; "
      f"products alone {prod * 1000:.3f} ms over {len(mats)} matrices ({nbytes / 1e6:.1f} MB, {nbytes / prod / 1e9:.1f} GB/s)")
by = {}
for t, n, k in per: by.setdefault((n, k), []).append(t)
for (n, k), v in sorted(by.items()): print(f"  {n}x{k}: {len(v)} x {sum(v) / len(v) * 1e6:.1f} us (warm-ish)")
