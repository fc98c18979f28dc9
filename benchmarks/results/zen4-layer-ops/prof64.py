import time, torch, transformers, llmbin
from llmbin.runtime.prefill_bench import prefill_seconds
torch.set_num_threads(2)
m = transformers.AutoModelForCausalLM.from_pretrained("/tmp/s45/smol-ptq161").eval()
for _ in range(3): print([round(64/t,1) for t in prefill_seconds(m, 64, reps=5)])
from transformers import StaticCache
from llmbin.models.cache_api import cache_kwargs
ids = torch.randint(0, 49000, (1, 64), generator=torch.Generator().manual_seed(0))
cache = StaticCache(config=m.config, max_cache_len=64)
with torch.inference_mode(), torch.profiler.profile() as p:
    for _ in range(10):
        cache.reset(); m(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
