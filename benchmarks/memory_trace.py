"""Where a quantize run's host memory goes: resident anonymous vs file-backed memory, sampled while it runs.

VmHWM (what `llmbin compare` reports as peak RSS) counts clean pages of the memory-mapped weights file too, which
the kernel can drop under pressure; anonymous memory is what must fit. This samples both every 0.1 s and notes them
at the run's stage boundaries (load, rounding to the storage dtype, layer-by-layer quantization, save).

    OMP_NUM_THREADS=2 python benchmarks/memory_trace.py qwen2.5-coder-0.5b --method rtn --set bits=4 \
        --dataset data/networkx-3.3-calib.txt --nsamples 32 --seqlen 512 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time


def status_mb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) // 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--method", default="rtn")
    ap.add_argument("--set", action="append", default=[], help="method param KEY=VALUE (repeatable)")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--json", help="write the trace here")
    args = ap.parse_args()

    import llmbin.api as api
    import llmbin.recipe.run as run
    from llmbin.recipe import Recipe

    start, samples, marks, stop = time.time(), [], [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((round(time.time() - start, 2), status_mb()))
            time.sleep(0.1)

    def mark(what: str) -> None:
        marks.append({"t": round(time.time() - start, 2), "at": what, **status_mb()})
        print(f"{marks[-1]['t']:7.1f}s  {what:<28} {status_mb()}", flush=True)

    def wrap(owner, name):
        real = getattr(owner, name)

        def traced(*a, **k):
            mark(f"before {name}")
            try:
                return real(*a, **k)
            finally:
                mark(f"after {name}")

        setattr(owner, name, traced)

    for owner, name in ((run, "load_model"), (run, "round_to_storage"), (run, "quantize_model"),
                        (api.QuantizedModel, "save")):
        wrap(owner, name)
    recipe = Recipe.create(args.method, calibration={"dataset": args.dataset, "nsamples": args.nsamples,
                                                      "seqlen": args.seqlen})
    for item in args.set:
        key, _, value = item.partition("=")
        recipe.set(key.strip(), value.strip())  # coerced to the field's type, as `llmbin quantize --set`
    recipe.pipeline.embeddings = recipe.pipeline.head = "none"  # protocol v2's rows
    threading.Thread(target=sample, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        api.quantize(args.model, recipe, out=os.path.join(tmp, "q"), verbose=False)
    mark("end")
    stop.set()
    peak_anon = max(samples, key=lambda s: s[1]["RssAnon"])
    result = {"model": args.model, "method": args.method, "params": recipe.to_dict()["params"],
              "nsamples": args.nsamples, "seqlen": args.seqlen, "threads": os.environ.get("OMP_NUM_THREADS"),
              "machine": platform.processor(), "load_average": os.getloadavg(), "peak_vmhwm_mb": marks[-1]["VmHWM"],
              "peak_sampled_anon_mb": peak_anon[1]["RssAnon"], "peak_sampled_anon_at_s": peak_anon[0],
              "marks": marks, "samples": samples}
    print(f"peak VmHWM {result['peak_vmhwm_mb']} MB; peak sampled anonymous {result['peak_sampled_anon_mb']} MB "
          f"at {peak_anon[0]} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
