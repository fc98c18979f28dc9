"""In-process A/B of the eval loop (valid_xsum, 32 windows x 512 in batches of 4, forward + cross-entropy, as
`llmbin eval` runs it): the float32 model and the packed checkpoint (default activation rounding), each with
transformers' SDPA and with llmbin's attention (nn/grouped_attention.py), rounds alternating in order."""
import sys, time, json, statistics, torch, transformers
import torch.nn.functional as F
import llmbin
from llmbin.data import evaluation_windows, load_text, token_stream
from llmbin.models.loading import load_model
from llmbin.nn.grouped_attention import use_grouped_attention
torch.set_num_threads(2)
path, rounds = sys.argv[1], int(sys.argv[2])
packed = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
flt = load_model("smollm2-135m")[0].eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = token_stream(tok, load_text("/work/shared/data/valid_xsum.txt", split="evaluation"))
w = evaluation_windows(ids, 512, 32)
def run(model):
    nll = 0.0
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, 32, 4):
            x = w[s:s + 4]
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
    return time.perf_counter() - t, float(torch.tensor(nll / (32 * 511)).exp())
def attn(model, impl):
    model.config._attn_implementation = "sdpa"
    if impl == "llmbin":
        assert use_grouped_attention(model)
    return model
variants = {"float32-sdpa": (flt, "sdpa"), "float32-llmbin": (flt, "llmbin"),
            "packed-sdpa": (packed, "sdpa"), "packed-llmbin": (packed, "llmbin")}
res = {k: [] for k in variants}; ppl = {}
run(attn(packed, "llmbin"))
for r in range(rounds):
    for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
        model, impl = variants[name]
        dt, p = run(attn(model, impl)); res[name].append(dt); ppl[name] = p
        print(r, name, round(dt, 2), round(p, 4), flush=True)
med = {k: statistics.median(v) for k, v in res.items()}
out = {"rounds": rounds, "threads": 2, "median_s": med, "ppl": ppl, "all_s": res,
       "float32-sdpa/packed-sdpa": med["float32-sdpa"] / med["packed-sdpa"],
       "float32-sdpa/packed-llmbin": med["float32-sdpa"] / med["packed-llmbin"],
       "float32-llmbin/packed-llmbin": med["float32-llmbin"] / med["packed-llmbin"]}
print(json.dumps({k: v for k, v in out.items() if k != "all_s"}))
if len(sys.argv) > 3: json.dump(out, open(sys.argv[3], "w"), indent=1)
