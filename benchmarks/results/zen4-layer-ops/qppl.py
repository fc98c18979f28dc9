import sys, torch, transformers, llmbin, math
import torch.nn.functional as F
from llmbin.data import evaluation_windows, load_text, token_stream
torch.set_num_threads(2)
path = sys.argv[1]
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
w = evaluation_windows(token_stream(tok, load_text("/work/shared/data/valid_xsum.txt", split="evaluation")), 512, int(sys.argv[2]))
fused = {mod: type(mod) for mod in m.modules() if type(mod).__name__.startswith("Fused")}
plain = {mod: cls.__mro__[2] for mod, cls in fused.items()}
for label, d in (("fused", fused), ("plain", plain)):
    for mod, c in d.items(): mod.__class__ = c
    nll = 0.0
    with torch.inference_mode():
        for s in range(0, w.shape[0], 4):
            x = w[s:s + 4]; lg = m(input_ids=x).logits[:, :-1].float()
            nll += F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
    print(label, "ppl", round(math.exp(nll / (w.shape[0] * 511)), 4))
