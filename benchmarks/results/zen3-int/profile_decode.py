import sys, time, torch, llmbin
from llmbin.checkpoint.reader import load_checkpoint
from llmbin.nn import PackedMatrix
from llmbin.runtime.decoder import prepare_packed, Decoder
from llmbin.runtime.decode_bench import static_speed
from llmbin.kernels.cpu.backend import gemv_threads
torch.set_num_threads(2)
m, tok = load_checkpoint(sys.argv[1]); prepare_packed(m)
ids = tok("The history of the city", return_tensors="pt").input_ids
dec = Decoder(m, ids.shape[1] + 128)
for _ in range(2): s, _ = static_speed(m, ids, 128, decoder=dec)
print("decode tok/s", s["decode_tokens_per_s"], s.get("decode_threads"))
mods = [x for x in m.modules() if isinstance(x, PackedMatrix)]
xs = [torch.randn(1, x.in_features) for x in mods]
with gemv_threads(2), torch.inference_mode():
    for _ in range(3):
        t = time.perf_counter()
        for r in range(20):
            for x, mm in zip(xs, mods): mm.matmul(x)
        dt = (time.perf_counter() - t) / 20
    print("all packed matmuls, 1 token: %.2f ms" % (dt * 1e3))
    by = {}
    for x, mm in zip(xs, mods):
        t = time.perf_counter()
        for r in range(20): mm.matmul(x)
        k = type(mm).__name__ + str(tuple(mm.meta.get(a) for a in ("format", "bits", "out_features", "in_features")))
        by[k] = by.get(k, 0) + (time.perf_counter() - t) / 20
    for k, v in sorted(by.items(), key=lambda a: -a[1])[:8]: print("%.3f ms" % (v * 1e3), k)
