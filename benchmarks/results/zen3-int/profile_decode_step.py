import sys, torch, llmbin
from torch.profiler import profile, ProfilerActivity
from llmbin.checkpoint.reader import load_checkpoint
from llmbin.runtime.decoder import prepare_packed, Decoder
from llmbin.runtime.decode_bench import static_speed
torch.set_num_threads(2)
m, tok = load_checkpoint(sys.argv[1]); prepare_packed(m)
ids = tok("The history of the city", return_tensors="pt").input_ids
dec = Decoder(m, ids.shape[1] + 64)
s, _ = static_speed(m, ids, 64, decoder=dec)
s, _ = static_speed(m, ids, 64, decoder=dec)
print("decode tok/s", s["decode_tokens_per_s"])
with profile(activities=[ProfilerActivity.CPU]) as prof:
    s, _ = static_speed(m, ids, 64, decoder=dec)
print("profiled tok/s", s["decode_tokens_per_s"])
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
