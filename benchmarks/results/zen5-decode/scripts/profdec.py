import sys, time, torch, transformers
import llmbin
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
    import torch._inductor.config
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
        static_speed(m, ids, 64, decoder=dec)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
