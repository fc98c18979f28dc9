import sys, time, torch, transformers
import torch.nn.functional as F
import llmbin
from llmbin.data import evaluation_windows, load_text, token_stream
torch.set_num_threads(2)
path = sys.argv[1]
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
t = time.perf_counter(); ids = token_stream(tok, load_text("../shared/data/valid_xsum.txt", split="evaluation")); print("tokenize", round(time.perf_counter() - t, 2), len(ids))
w = evaluation_windows(ids, 512, 32)
fw = ls = 0.0
with torch.no_grad():
    for s in range(0, 32, 4):
        x = w[s:s+4]
        t = time.perf_counter(); logits = m(input_ids=x, use_cache=False).logits[:, :-1].float(); t1 = time.perf_counter()
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item(); t2 = time.perf_counter()
        fw += t1 - t; ls += t2 - t1
print("forward", round(fw, 2), "loss", round(ls, 2))
