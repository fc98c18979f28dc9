"""In-process A/B of the integer GEMM's blocking, alternating call by call (this VM's speed drifts within seconds):
every distinct packed layer of a checkpoint (its packed head included) at M tokens on the auto path; for each layer,
`reps` rounds in which every blocking runs once, in rotated order; per layer the median time of each; a forward's
product time = sum over layers of median x how many the model holds. Outputs equal the unblocked order's bit for bit."""
import sys, time, json, statistics, torch, transformers, llmbin
from llmbin.kernels import cpu
from llmbin.kernels.cpu.build import load_extension
from llmbin.nn import PackedMatrix
torch.set_num_threads(2)
path, M, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
modes = {k: tuple(map(int, k.split("/"))) for k in sys.argv[4].split(",")} if len(sys.argv) > 4 else {}
modes = {"unblocked": (1 << 40, 1 << 40), **modes}
ext = load_extension()
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
seen = {}
for name, mod in m.named_modules():
    if isinstance(mod, PackedMatrix):
        key = (mod.meta["out_features"], mod.meta["in_features"], mod.meta.get("format"))
        seen.setdefault(key, [name.split(".")[-1], []])[1].append(mod)
g = torch.Generator().manual_seed(0)
work = [(n, len(v), cpu.prepare_state(v[0]), torch.randn(M, v[0].meta["in_features"], generator=g)) for n, v in seen.values()]
per = {k: {} for k in modes}
names = list(modes)
with torch.inference_mode():
    for lname, n, st, x in work:
        ext.set_int_gemm_blocking(*modes["unblocked"]); ref = cpu.lut_matmul(st, x)
        for r in range(reps):
            for mode in names[r % len(names):] + names[:r % len(names)]:
                ext.set_int_gemm_blocking(*modes[mode])
                t = time.perf_counter(); y = cpu.lut_matmul(st, x); dt = time.perf_counter() - t
                if r == 0: assert torch.equal(y, ref), (mode, lname)
                per[mode].setdefault(lname, []).append(dt)
tot = {k: sum(statistics.median(per[k][ln]) * n for ln, n, _, _ in work) for k in modes}
print(f"M={M} reps={reps} product seconds per forward (sum of per-layer medians):", json.dumps({k: round(v, 4) for k, v in tot.items()}))
print("unblocked / each:", {k: round(tot["unblocked"] / v, 3) for k, v in tot.items()})
for ln, n, _, _ in work:
    print(f"{ln:14s} x{n:2d}", {k: round(1e3 * statistics.median(per[k][ln]), 2) for k in modes},
          "ratio", {k: round(statistics.median(per["unblocked"][ln]) / statistics.median(per[k][ln]), 3) for k in modes if k != "unblocked"})
