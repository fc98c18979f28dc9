import sys, time, torch, transformers
import llmbin
from transformers import StaticCache
from llmbin.models.cache_api import cache_kwargs
from llmbin.runtime.prefill_bench import prefill_seconds
from llmbin.runtime.decoder import compile_options
torch.set_num_threads(2)
path, n = sys.argv[1], int(sys.argv[2])
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
t = prefill_seconds(m, n, reps=5)
print("eager pp%d: %.1f tok/s" % (n, n * len(t) / sum(t)), flush=True)
ids = torch.randint(0, 49152, (1, n), generator=torch.Generator().manual_seed(0))
cache = StaticCache(config=m.config, max_cache_len=n)
with torch.inference_mode():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        cache.reset(); m(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
if len(sys.argv) > 3:
    def fwd(ids):
        return m(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(cache)).logits
    f = torch.compile(fwd, dynamic=True, fullgraph=True, options=compile_options())
    with torch.inference_mode():
        t0 = time.perf_counter(); cache.reset(); f(ids); print("compile %.1f s" % (time.perf_counter() - t0), flush=True)
        ts = []
        for _ in range(6):
            cache.reset(); t0 = time.perf_counter(); f(ids); ts.append(time.perf_counter() - t0)
        print("compiled pp%d: %.1f tok/s" % (n, n * 6 / sum(ts)))
        ref = m(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        cache.reset(); out = f(ids)
        print("max |diff| vs eager", (out - ref).abs().max().item())
