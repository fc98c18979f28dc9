"""Longer loading fuzz than CI's (tests/test_fuzz_load.py), two ways:

  python benchmarks/fuzz_load.py random --count 20000 --seed 1      # the structured mutations, many more of them
  python benchmarks/fuzz_load.py atheris --seconds 600               # coverage-guided byte edits (pip install atheris)

`random` runs tests/fuzz's mutation set in a worker process (crash and hang detection as in CI). `atheris` lets
libFuzzer, guided by line coverage of llmbin's own code, pick a corpus checkpoint, a file in it (config.json, the
shard index, a shard) and byte edits to make; the result is loaded and run. Loading may end only in an LlmbinError
or a model that computes; any other exception is reported by atheris as a finding (the input is saved). Results
go to benchmarks/results/fuzz/ with the exact command.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import corpus  # noqa: E402
import runner  # noqa: E402


def random_mode(args, root: Path, entries: list[str]) -> dict:
    start = time.time()
    results = runner.run(root, entries, args.count, args.seed, Path(args.work))
    fails = [r for r in results if "fail" in r]
    return {"mode": "random", "count": len(results), "seed": args.seed, "seconds": round(time.time() - start, 1),
            "outcomes": dict(Counter(r["outcome"] for r in results)),
            "by_mutation": {k: dict(v) for k, v in _by_mutation(results).items()},
            "failures": [{k: v for k, v in r.items() if k != "trace"} for r in fails[:50]]}


def _by_mutation(results):
    table = {}
    for r in results:
        table.setdefault(r["mutation"], Counter())[r["outcome"]] += 1
    return table


def atheris_mode(args, root: Path, entries: list[str]) -> dict:
    import atheris

    with atheris.instrument_imports(include=["llmbin"]):
        import torch

        from llmbin.api import load
        from llmbin.errors import LlmbinError
    work = Path(args.work)
    ids = torch.tensor(runner.IDS)
    seen = Counter()
    start = time.time()

    def progress():  # libFuzzer ends the process itself: the summary is kept current on disk as it goes
        summary = {"mode": "atheris", "seconds": round(time.time() - start, 1), "executions": sum(seen.values()),
                   "outcomes": dict(seen), "findings": sorted(p.name for p in work.parent.glob("finding-crash-*")),
                   "command": "python " + " ".join(sys.argv), "corpus": entries,
                   "threads": os.environ.get("OMP_NUM_THREADS")}
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")

    def one_input(data: bytes):
        fdp = atheris.FuzzedDataProvider(data)
        entry = entries[fdp.ConsumeIntInRange(0, len(entries) - 1)]
        target = work / "case"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(root / entry, target)
        files = sorted(p for p in target.iterdir() if p.suffix in (".json", ".safetensors"))
        path = files[fdp.ConsumeIntInRange(0, len(files) - 1)]
        blob = bytearray(path.read_bytes())
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            if not blob:
                break
            where = fdp.ConsumeIntInRange(0, len(blob) - 1)
            kind = fdp.ConsumeIntInRange(0, 3)
            if kind == 0:
                blob[where] = fdp.ConsumeInt(1) & 0xFF
            elif kind == 1:
                del blob[where:where + fdp.ConsumeIntInRange(1, 64)]
            elif kind == 2:
                blob[where:where] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16))
            else:
                blob = blob[:where]
        path.write_bytes(bytes(blob))
        try:
            model, _ = load(target)
            with torch.no_grad():
                model(ids)
            seen["loaded"] += 1
        except LlmbinError as exc:
            if "\n" in str(exc):
                raise AssertionError(f"a multi-line error: {exc!r}") from None
            seen["error"] += 1
        if sum(seen.values()) % 500 == 0:
            progress()

    atheris.Setup([sys.argv[0], f"-max_total_time={args.seconds}", f"-artifact_prefix={work.parent}/finding-",
                   "-rss_limit_mb=8192", "-timeout=60"], one_input)
    atheris.Fuzz()  # never returns: libFuzzer exits when the time is up or at the first finding


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["random", "atheris"])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--corpus", default="/tmp/llmbin-fuzz-corpus")
    parser.add_argument("--work", default="/tmp/llmbin-fuzz-work/w")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args()
    os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")
    root = Path(args.corpus)
    entries = sorted(corpus.build(root))
    summary = (random_mode if args.mode == "random" else atheris_mode)(args, root, entries)
    summary.update(command="python " + " ".join(sys.argv), corpus=entries, threads=os.environ.get("OMP_NUM_THREADS"))
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
