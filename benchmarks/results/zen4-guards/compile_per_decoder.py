import sys, torch, transformers, llmbin
from llmbin.runtime.decode_bench import static_speed
from llmbin.runtime.decoder import Decoder
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok("The capital of France is", return_tensors="pt").input_ids
for i in range(3):
    with torch.inference_mode():
        r = static_speed(m, ids, 16, decoder=Decoder(m, ids.shape[1] + 16))
    print(i, r[0]["compile_s"] if isinstance(r, tuple) else r)
