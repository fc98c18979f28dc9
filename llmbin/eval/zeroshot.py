"""Zero-shot (or k-shot) lm-eval tasks on a loaded model, summarised into a labelled, reproducible record.

The record keeps what is needed to repeat a number: per task its metrics with standard errors, task
version, samples used out of the task's total, shots and output type; for the run the four seeds
(python random, numpy, torch, few-shot sampler), limit, batch size, context length and lm-eval's version.
"""
from __future__ import annotations

import math
import time

from ..integrations.lmeval import (DEFAULT_SEEDS, hflm, lm_eval_version, load_tasks, quiet_lm_eval, run_tasks,
                                   task_manager)

PROTOCOL = "lm-eval"
BOOTSTRAP_ITERS = 100000  # lm-eval's default; mean metrics (acc) use the closed-form standard error anyway


def _number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if isinstance(value, float) and math.isnan(value) else value
    return None  # lm-eval writes "N/A" where it has no standard error


def task_metrics(entry: dict) -> dict:
    """lm-eval's {"acc,none": x, "acc_stderr,none": s, ...} -> {"acc": {"value": x, "stderr": s}}."""
    metrics: dict[str, dict] = {}
    for key, value in entry.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        if metric.endswith("_stderr"):
            continue
        name = metric if filt == "none" else f"{metric}/{filt}"
        metrics[name] = {"value": _number(value), "stderr": _number(entry.get(f"{metric}_stderr,{filt}"))}
    return metrics


def summarize(raw: dict) -> dict:
    tasks = {}
    for name, entry in {**raw.get("results", {}), **raw.get("groups", {})}.items():
        config = raw.get("configs", {}).get(name, {})
        n = raw.get("n-samples", {}).get(name, {})
        tasks[name] = {"metrics": task_metrics(entry), "version": raw.get("versions", {}).get(name),
                       "n_samples": n.get("effective"), "n_total": n.get("original"),
                       "num_fewshot": raw.get("n-shot", {}).get(name), "output_type": config.get("output_type"),
                       "higher_is_better": raw.get("higher_is_better", {}).get(name, {}),
                       "is_group": name in raw.get("groups", {})}
        shots = tasks[name]["num_fewshot"] or 0
        tasks[name]["protocol"] = f"{PROTOCOL} {config.get('output_type', 'group')}, {shots}-shot"
    return tasks


def evaluate_tasks(model, tokenizer, names: list[str], include_path=None, limit: int | float | None = None,
                   num_fewshot: int | None = None, batch_size: int = 4, max_length: int | None = None,
                   seeds: dict | None = None, lm=None, verbose: bool = False) -> dict:
    """Run lm-eval tasks on `model` (already loaded: packed llmbin models run their own kernels)."""
    quiet_lm_eval(verbose)
    start = time.perf_counter()
    seeds = {**DEFAULT_SEEDS, **(seeds or {})}
    manager = task_manager(names, include_path)
    built = load_tasks(manager, names)
    lm = lm or hflm(model, tokenizer, batch_size, max_length)
    raw = run_tasks(lm, manager, built, limit, num_fewshot, seeds, BOOTSTRAP_ITERS)
    return {"protocol": PROTOCOL, "lm_eval": lm_eval_version(), "requested": list(names),
            "include_path": [str(p) for p in ([include_path] if isinstance(include_path, str) else include_path or [])],
            "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size, "max_length": lm.max_length,
            "bootstrap_iters": BOOTSTRAP_ITERS, "seeds": seeds, "tasks": summarize(raw),
            "seconds": round(time.perf_counter() - start, 2)}


def headline(task: dict) -> tuple[str, dict] | None:
    """The metric to show first: acc, then acc_norm, then the first metric with a value."""
    metrics = task["metrics"]
    for name in ("acc", "acc_norm", "exact_match", "word_perplexity"):
        if name in metrics and metrics[name]["value"] is not None:
            return name, metrics[name]
    for name, m in metrics.items():
        if m["value"] is not None:
            return name, m
    return None
