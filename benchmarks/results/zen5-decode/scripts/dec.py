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
    r = [static_speed(m, ids, 128, decoder=dec)[0]["decode_tokens_per_s"] for _ in range(6)]
print(sys.argv[-1], path.split('/')[-1], "decode tok/s mean %.1f:" % (sum(r) / len(r)), " ".join("%.1f" % v for v in r), flush=True)
