"""In-process A/B of the eval loop (valid_xsum, 32 windows x 512, batches of 4, forward + cross-entropy), variants
alternated per batch in rotated order: the float32 model (transformers' own, SDPA) and the packed checkpoint as of
session 48 (llmbin attention, transformers' elementwise ops, int8 scale per block of 32), + fused layer ops, + int8
scale per span of 4 blocks. 2 torch threads."""
import sys, time, json, torch, transformers
import torch.nn.functional as F
import llmbin
from llmbin.data import evaluation_windows, load_text, token_stream
from llmbin.models.loading import load_model
from llmbin.kernels.cpu.build import load_extension
torch.set_num_threads(2)
ext = load_extension()
path, passes = sys.argv[1], int(sys.argv[2])
packed = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
flt = load_model("smollm2-135m")[0].eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = token_stream(tok, load_text("/work/shared/data/valid_xsum.txt", split="evaluation"))
w = evaluation_windows(ids, 512, 32)
fused = {mod: type(mod) for mod in packed.modules() if type(mod).__name__.startswith("Fused")}
plain = {mod: cls.__mro__[2] for mod, cls in fused.items()}
def setup(classes, span):
    for mod, c in classes.items(): mod.__class__ = c
    ext.set_q8_span(span)
variants = [("float32", flt, None), ("packed-s48", packed, (plain, 1)), ("packed-fused", packed, (fused, 1)),
            ("packed-fused-span4", packed, (fused, 4))]
secs = {v[0]: 0.0 for v in variants}; nll = {v[0]: 0.0 for v in variants}
with torch.inference_mode():
    packed(input_ids=w[:4], use_cache=False)
    i = 0
    for p in range(passes):
        for s in range(0, 32, 4):
            x = w[s:s + 4]
            order = variants[i % 4:] + variants[:i % 4]; i += 1
            for name, model, cfg in order:
                if cfg: setup(*cfg)
                t = time.perf_counter()
                logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
                secs[name] += time.perf_counter() - t
                if p == 0: nll[name] += loss
n = 32 * 511
out = {name: {"seconds": round(secs[name], 2), "ppl": round(float(torch.exp(torch.tensor(nll[name] / n, dtype=torch.float64))), 4),
              "float32_over_this": round(secs["float32"] / secs[name], 3)} for name in secs}
print(json.dumps(out, indent=1))
