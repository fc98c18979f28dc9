"""What loading a packed checkpoint adds to the process's memory, against the checkpoint's size on disk.

Resident memory (VmRSS, and its anonymous part RssAnon) is read at a baseline, after load_checkpoint, after every
packed matrix is repacked for its kernel (prepare_packed: what the first forward would do), and after one forward of
64 tokens and one of 1 token; "added" = the step's resident memory minus the baseline. Twice: cold (the first load
after `import llmbin` + torch + transformers, which also pays the tokenizer and the libraries' one-time costs) and
warm (the same checkpoint again after the first copy was deleted and the freed heap handed back: what the model
itself holds). The issue's bar, <= 2x the file, is read on the warm load ("added_over_file").

    python -P benchmarks/load_memory.py CHECKPOINT --json benchmarks/results/load-memory-gptq4.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path


def status_mb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    import torch
    import transformers  # noqa: F401

    import llmbin  # noqa: F401
    from llmbin.checkpoint.reader import load_checkpoint
    from llmbin.host.memory import release_freed_memory
    from llmbin.host.environment import cpu_name
    from llmbin.nn import PackedMatrix
    from llmbin.runtime.decoder import prepare_packed

    file_mb = sum(p.stat().st_size for p in Path(args.checkpoint).glob("*.safetensors")) / 2 ** 20

    def load_and_run(steps: dict) -> tuple:
        gc.collect()
        release_freed_memory()
        steps["baseline"] = status_mb()
        model, tokenizer = load_checkpoint(args.checkpoint, "cpu", torch.float32)
        gc.collect()
        steps["loaded"] = status_mb()
        prepare_packed(model)
        gc.collect()
        steps["repacked"] = status_mb()
        with torch.inference_mode():
            model(input_ids=torch.randint(0, 1000, (1, 64)), use_cache=False)
            model(input_ids=torch.randint(0, 1000, (1, 1)), use_cache=False)
        gc.collect()
        steps["after forwards"] = status_mb()
        return model, tokenizer

    def added(steps: dict, key: str) -> dict:
        return {k: round(v[key] - steps["baseline"][key], 1) for k, v in steps.items()}

    # cold: the first load in a fresh process also pays the tokenizer and one-time costs of the libraries (lazy
    # imports, code pages, allocator arenas); warm: the same checkpoint loaded again after the first copy was freed
    # and the heap handed back (malloc_trim), i.e. what the model itself holds
    cold, warm = {}, {}
    model, tokenizer = load_and_run(cold)
    backends = sorted({type(m._prepared[(torch.device("cpu"), torch.float32)][0]).__name__
                       for m in model.modules() if isinstance(m, PackedMatrix)})
    del model, tokenizer
    model, tokenizer = load_and_run(warm)
    report = {"checkpoint": args.checkpoint, "file_mb": round(file_mb, 1), "backends": backends, "cpu": cpu_name(),
              "torch": torch.__version__, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "loadavg": round(os.getloadavg()[0], 2), "cold": cold, "warm": warm,
              "cold_added_mb": added(cold, "VmRSS"), "cold_added_anon_mb": added(cold, "RssAnon"),
              "warm_added_mb": added(warm, "VmRSS"), "warm_added_anon_mb": added(warm, "RssAnon")}
    report["cold_added_over_file"] = round(max(report["cold_added_mb"].values()) / file_mb, 2)
    report["added_over_file"] = round(max(report["warm_added_mb"].values()) / file_mb, 2)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
