import sys, time, torch, transformers
import llmbin
from llmbin.runtime import decoder as D
from llmbin.runtime.decode_bench import static_speed
torch.set_num_threads(2)
path, variant = sys.argv[1], sys.argv[2]
if variant == "filter":
    base = D.compile_options
    D.compile_options = lambda: {**base(), "guard_filter_fn": lambda entries: [False for _ in entries]}
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = tok("The quick brown fox jumps over the lazy dog. Once upon a time", return_tensors="pt").input_ids
dec = D.Decoder(m, ids.shape[1] + 128)
if variant == "nostance":
    orig = dec._step
    def step(kind, token, position):
        if kind in dec.warm:
            return dec.compiled[kind](token, position)
        return orig(kind, token, position)
    dec._step = step
with torch.inference_mode():
    static_speed(m, ids, 32, decoder=dec)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        static_speed(m, ids, 64, decoder=dec)
for e in p.key_averages():
    if "Cache Lookup" in e.key or "Pregraph" in e.key or "CompiledFxGraph" in e.key:
        print(variant, e.key[:40], round(e.self_cpu_time_total / e.count, 1), "us/call", e.count)
