"""Run load-fuzz mutations in a worker process and judge what loading did.

The worker copies a corpus checkpoint, applies one mutation, loads it with llmbin.load and runs a forward pass,
and reports one JSON line. The parent gives each mutation a time limit, and notices a worker that died (a crash)
or stopped answering (a hang); it then starts a new worker for the rest. Verdicts:
  refuse  -> must end in one LlmbinError line; if it loads, it must compute exactly what the original does (the
             change was a no-op, e.g. a group size larger than the row either way), else it was accepted silently
  refuse! -> must end in one LlmbinError line, whatever it would compute (a shard read from outside the directory)
  load    -> must load and compute finite logits (only values changed)
  any     -> one LlmbinError line or a model that computes
  crash, hang, any other exception -> always a failure.
Usage as a worker: python runner.py worker CORPUS_ROOT WORK_DIR (tasks on stdin, results on stdout).
"""
from __future__ import annotations

import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
IDS = [[1, 20, 30, 42, 7, 99, 123, 5, 250, 17]]


def mutation_table() -> dict:
    sys.path.insert(0, str(HERE))
    import mutations as m
    import mutations_meta as mm

    return {f.__name__: f for f in (
        m.index_out_of_range, m.index_duplicate, m.flip_index_bit, m.flip_code_bits, m.scale_value, m.nonfinite_value,
        m.zero_point_out_of_range, m.wrong_shape, m.wrong_dtype, m.missing_tensor, m.extra_tensor, m.truncate_shard,
        m.corrupt_header, mm.meta_field, mm.meta_delete, mm.huge_dimension, mm.quant_config_shape, mm.broken_json,
        mm.shard_escape, mm.base_tensor_shape)}


def worker(corpus_root: Path, work: Path) -> None:
    import torch

    from llmbin.api import load
    from llmbin.errors import LlmbinError

    table, references = mutation_table(), {}
    ids = torch.tensor(IDS)

    def logits_of(path):
        model, _ = load(path)
        with torch.no_grad():
            return model(ids).logits

    for line in sys.stdin:
        task = json.loads(line)
        record, started = {"index": task["index"]}, time.perf_counter()
        applied = None
        for entry in task["entries"]:  # the planned checkpoint first, then any other that has what it mutates
            target = work / f"task-{task['index']}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(corpus_root / entry, target)
            try:
                applied = table[task["mutation"]](target, random.Random(task["seed"]))
            except Exception as exc:  # noqa: BLE001 - the mutation itself did not apply: report, not judge
                record["skip_reason"] = f"{type(exc).__name__}: {exc}"
            if applied is not None:
                record["entry"] = entry
                break
        if applied is None:
            record["outcome"] = "skipped"
        else:
            if record["entry"] not in references:
                references[record["entry"]] = logits_of(corpus_root / record["entry"])
            record["what"], record["expect"] = applied
            try:
                got = logits_of(target)
                ref = references[record["entry"]]
                record.update(outcome="loaded", finite=bool(torch.isfinite(got).all()),
                              same=got.shape == ref.shape and bool(torch.equal(got, ref)))
            except LlmbinError as exc:
                record.update(outcome="error", message=str(exc))
            except Exception as exc:  # noqa: BLE001 - the failure this fuzzer looks for
                record.update(outcome="exception", message=f"{type(exc).__name__}: {exc}",
                              trace=traceback.format_exc()[-1500:])
        record["seconds"] = round(time.perf_counter() - started, 3)
        print(json.dumps(record), flush=True)


def verdict(record: dict) -> str | None:
    """None when the outcome is what the mutation allows, else why not."""
    outcome, expect = record["outcome"], record.get("expect")
    if outcome in ("crash", "hang", "exception"):
        return f"{outcome}: {record.get('message', '')[:300]}"
    if outcome == "skipped":
        return None
    if outcome == "error":
        if "\n" in record["message"]:
            return "the error is not one line"
        return "a values-only change was refused" if expect == "load" else None
    if expect == "load":
        return None if record["finite"] else "values-only change: non-finite logits"
    if expect == "refuse!":
        return "loaded: read a shard outside the checkpoint's directory"
    if expect == "refuse" and not record["same"]:
        return "a structural change was accepted silently (it loads and computes something else)"
    return None


def plan(entries: list[str], count: int, seed: int) -> list[dict]:
    rng, names = random.Random(seed), sorted(mutation_table())
    tasks = []
    for i in range(count):
        order = list(entries)
        rng.shuffle(order)
        tasks.append({"index": i, "entries": order, "mutation": names[i % len(names)], "seed": rng.randrange(2**31)})
    return tasks


def run(corpus_root: Path, entries: list[str], count: int, seed: int, work: Path, timeout_s: float = 60.0,
        log=None) -> list[dict]:
    """Every task's record with its verdict ('fail' key when it failed)."""
    env = {**os.environ, "HF_DEACTIVATE_ASYNC_LOAD": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    tasks, results, proc = plan(entries, count, seed), [], None
    for task in tasks:
        if proc is None or proc.poll() is not None:
            proc = subprocess.Popen([sys.executable, str(Path(__file__)), "worker", str(corpus_root), str(work)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    env=env)
        proc.stdin.write(json.dumps(task) + "\n")
        proc.stdin.flush()
        record = _answer(proc, timeout_s)
        if record is None:  # no line: the worker died or hangs
            died = proc.poll() is not None
            record = {"index": task["index"], "outcome": "crash" if died else "hang",
                      "message": f"exit status {proc.returncode}" if died else f"no answer in {timeout_s} s"}
            if not died:
                proc.kill()
            proc.wait()
            proc = None
        record.setdefault("entry", task["entries"][0])
        record.update(mutation=task["mutation"], seed=task["seed"])
        why = verdict(record)
        if why:
            record["fail"] = why
        results.append(record)
        if log:
            log(record)
    if proc is not None:
        proc.stdin.close()
        proc.wait(timeout=30)
    return results


def _answer(proc, timeout_s: float) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        line = proc.stdout.readline()
        if not line:
            return None
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a stray print of the model's code
    return None


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    worker(Path(sys.argv[2]), Path(sys.argv[3]))
