"""In-process A/B of the eval loop (valid_xsum, 32 windows x 512 in batches of 4, forward + cross-entropy, as
`llmbin eval` runs it): the float32 model against the packed checkpoint with int16 activations and with int8 on
binarized channels only, rounds alternating; each round times every batch once per variant."""
import sys, time, json, statistics, torch, transformers
import torch.nn.functional as F
import llmbin
from llmbin.data import evaluation_windows, load_text, token_stream
from llmbin.models.loading import load_model
from llmbin.kernels.cpu.build import load_extension
torch.set_num_threads(2)
path, rounds = sys.argv[1], int(sys.argv[2])
packed = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
flt = load_model("smollm2-135m")
flt = flt[0] if isinstance(flt, tuple) else flt
flt.eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = token_stream(tok, load_text(sys.argv[3] if len(sys.argv) > 3 else "../shared/data/valid_xsum.txt", split="evaluation"))
w = evaluation_windows(ids, 512, 32)
ext = load_extension()
def run(model):
    nll = 0.0
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, 32, 4):
            x = w[s:s + 4]
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
    return time.perf_counter() - t, float(torch.tensor(nll / (32 * 511)).exp())
variants = {"float32": lambda: (flt, False), "packed-int16": lambda: (packed, False), "packed-int8-binarized": lambda: (packed, True)}
res = {k: [] for k in variants}; ppl = {}
run(packed)
for r in range(rounds):
    for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
        model, b = variants[name]()
        ext.set_int_gemm_int8_binarized(b)
        dt, p = run(model); res[name].append(dt); ppl[name] = p
        print(r, name, round(dt, 2), round(p, 4), flush=True)
med = {k: statistics.median(v) for k, v in res.items()}
out = {"rounds": rounds, "threads": 2, "median_s": med, "ppl": ppl, "all_s": res,
       "float/packed-int16": med["float32"] / med["packed-int16"], "float/packed-int8-binarized": med["float32"] / med["packed-int8-binarized"]}
print(json.dumps({k: v for k, v in out.items() if k != "all_s"}))
if len(sys.argv) > 4: json.dump(out, open(sys.argv[4], "w"), indent=1)
