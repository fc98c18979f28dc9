"""In-process A/B of the eval loop, alternating per batch (this VM's speed drifts within a minute): valid_xsum,
32 windows x 512 in batches of 4, forward + cross-entropy as `llmbin eval` runs it. For each batch every variant
runs once, in an order rotated batch by batch; a variant's time is the sum over its batches. Variants: the float32
model and the packed checkpoint (default activation rounding), each with transformers' SDPA and with llmbin's
attention (nn/grouped_attention.py)."""
import sys, time, json, torch, transformers
import torch.nn.functional as F
import llmbin
from llmbin.data import evaluation_windows, load_text, token_stream
from llmbin.models.loading import load_model
from llmbin.nn.grouped_attention import use_grouped_attention
torch.set_num_threads(2)
path, passes = sys.argv[1], int(sys.argv[2])
packed = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
flt = load_model("smollm2-135m")[0].eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = token_stream(tok, load_text("/work/shared/data/valid_xsum.txt", split="evaluation"))
w = evaluation_windows(ids, 512, 32)
def attn(model, impl):
    model.config._attn_implementation = "sdpa"
    if impl == "llmbin":
        assert use_grouped_attention(model)
    return model
variants = [("float32-sdpa", flt, "sdpa"), ("float32-llmbin", flt, "llmbin"),
            ("packed-sdpa", packed, "sdpa"), ("packed-llmbin", packed, "llmbin")]
secs = {v[0]: 0.0 for v in variants}; nll = {v[0]: 0.0 for v in variants}
with torch.no_grad():
    attn(packed, "llmbin")(input_ids=w[:4], use_cache=False)
    i = 0
    for p in range(passes):
        for s in range(0, 32, 4):
            x = w[s:s + 4]
            order = variants[i % 4:] + variants[:i % 4]; i += 1
            for name, model, impl in order:
                attn(model, impl)
                t = time.perf_counter()
                logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
                secs[name] += time.perf_counter() - t
                if p == 0: nll[name] += loss
        print(p, {k: round(v, 2) for k, v in secs.items()}, flush=True)
ppl = {k: float(torch.tensor(v / (32 * 511)).exp()) for k, v in nll.items()}
out = {"passes": passes, "threads": 2, "seconds_per_pass": {k: v / passes for k, v in secs.items()}, "ppl": ppl,
       "float32-sdpa/packed-sdpa": secs["float32-sdpa"] / secs["packed-sdpa"],
       "float32-sdpa/packed-llmbin": secs["float32-sdpa"] / secs["packed-llmbin"],
       "float32-llmbin/packed-llmbin": secs["float32-llmbin"] / secs["packed-llmbin"],
       "packed-sdpa/packed-llmbin": secs["packed-sdpa"] / secs["packed-llmbin"]}
print(json.dumps(out, indent=1))
if len(sys.argv) > 3: json.dump(out, open(sys.argv[3], "w"), indent=1)
