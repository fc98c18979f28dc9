"""Where `llmbin distill`'s host memory goes, phase by phase: resident memory (anonymous and file-backed) beside what
glibc's allocator has handed out (malloc in use) and holds free in its heap, sampled every 20 ms.

A gap between RSS and malloc-in-use is freed heap the allocator kept (fragmentation), which the pre-flight estimate
cannot see. Phases: load (the packed checkpoint), teacher (targets), install (trainable linears), held_out, loss
(forward), backward, run (the rest of the stage), start (everything else).

    OMP_NUM_THREADS=2 python benchmarks/distill_memory.py CHECKPOINT OUT --dataset ../shared/data/calib_coqa.txt \
        --nsamples 16 --seqlen 256 --json memory.json
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import threading
import time
from pathlib import Path

import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--json")
    args = ap.parse_args()

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    gib = 2**30
    phase, peaks = ["start"], {}

    def status() -> dict:
        with open("/proc/self/status") as f:
            return {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f if ln.startswith(("VmRSS", "RssAnon", "RssFile"))}

    def sample() -> None:
        while True:
            s, m = status(), libc.mallinfo2()
            p = peaks.setdefault(phase[0], {"rss_gib": 0.0, "malloc_in_use_gib": 0.0})
            p["malloc_in_use_gib"] = max(p["malloc_in_use_gib"], round((m.uordblks + m.hblkhd) / gib, 2))
            if s["VmRSS"] / gib > p["rss_gib"]:
                p.update(rss_gib=round(s["VmRSS"] / gib, 2), at_peak={
                    "anon": round(s["RssAnon"] / gib, 2), "file": round(s["RssFile"] / gib, 2),
                    "heap": round(m.arena / gib, 2), "heap_free": round(m.fordblks / gib, 2),
                    "mmapped": round(m.hblkhd / gib, 2)})
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    from llmbin.distill import on_checkpoint, stage
    from llmbin.distill.options import DistillOptions

    def mark(name, fn):
        def wrapped(*a, **k):
            prev, phase[0] = phase[0], name
            try:
                return fn(*a, **k)
            finally:
                phase[0] = prev
        return wrapped

    stage.Stage.install = mark("install", stage.Stage.install)
    stage.Stage.held_out_loss = mark("held_out", stage.Stage.held_out_loss)
    stage.Stage.batch_loss = mark("loss", stage.Stage.batch_loss)
    stage.Stage.run = mark("run", stage.Stage.run)
    torch.Tensor.backward = mark("backward", torch.Tensor.backward)
    on_checkpoint.cached_teacher_targets = mark("teacher", on_checkpoint.cached_teacher_targets)
    on_checkpoint.load_checkpoint = mark("load", on_checkpoint.load_checkpoint)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    options = DistillOptions(nsamples=args.nsamples, seqlen=args.seqlen, eval_every=8, save_every=0)
    outcome = on_checkpoint.distill_checkpoint(args.checkpoint, out, dataset=args.dataset, options=options)
    time.sleep(0.1)
    stats = {k: v for k, v in outcome.stats.items() if k != "history"}
    for name, p in peaks.items():
        print(f"{name:10s} RSS {p['rss_gib']:6.2f} GiB  malloc in use {p['malloc_in_use_gib']:6.2f} GiB  at the RSS "
              f"peak: {p.get('at_peak')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "stage": stats,
                                               "phases": peaks}, indent=1) + "\n")


if __name__ == "__main__":
    main()
