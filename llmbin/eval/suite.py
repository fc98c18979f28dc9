"""One evaluation protocol (perplexity texts + lm-eval tasks), applied identically to every model scored.

`llmbin eval` and `llmbin compare` both describe what they measure as an EvalSpec, so a quantized
model and its full-precision baseline are always scored the same way, and the JSON says how.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..checkpoint.reader import load_any
from ..errors import LlmbinError
from ..host.environment import versions
from ..integrations.lmeval import DEFAULT_SEEDS
from ..models.context import max_context
from .ppl import evaluate_ppl

PROTOCOLS = ("gptq", "lm-eval")


@dataclass
class EvalSpec:
    ppl: list[str] = field(default_factory=list)
    protocol: str = "gptq"  # perplexity protocol: gptq (token ppl, fixed windows) | lm-eval (wikitext word ppl)
    seqlen: int = 2048
    max_windows: int | None = None
    bos: bool = False
    tasks: list[str] = field(default_factory=list)
    include_path: list[str] = field(default_factory=list)
    limit: int | float | None = None
    num_fewshot: int | None = None
    batch_size: int = 4
    seeds: dict = field(default_factory=lambda: dict(DEFAULT_SEEDS))

    def __post_init__(self):
        from .lmeval_ppl import SOURCES

        if self.protocol not in PROTOCOLS:
            raise LlmbinError(f"unknown perplexity protocol {self.protocol!r}; choose {' or '.join(PROTOCOLS)}")
        if self.protocol == "lm-eval":
            other = [s for s in self.ppl if s.lower() not in SOURCES]
            if other:
                raise LlmbinError(f"protocol lm-eval scores only lm-eval's wikitext task, not {', '.join(other)}; "
                                  "use --protocol gptq for text files")
        if not self.ppl and not self.tasks:
            raise LlmbinError("nothing to evaluate: pass --ppl TEXT[,TEXT] and/or --tasks TASK[,TASK]")
        if self.limit is not None and self.limit <= 0:
            raise LlmbinError(f"--limit must be positive, got {self.limit}")

    def describe(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, ppl: str | None, protocol: str, tasks: str | None, limit: float | None, seed: int | None,
                     **rest) -> "EvalSpec":
        """From CLI strings: comma lists, --limit N (>= 1: examples) or fraction, one --seed for all four seeds."""
        split = lambda v: [s.strip() for s in (v or "").split(",") if s.strip()]  # noqa: E731
        if protocol == "lm-eval" and not ppl and not tasks:
            ppl = "wikitext"
        seeds = {k: seed for k in DEFAULT_SEEDS} if seed is not None else dict(DEFAULT_SEEDS)
        limit = int(limit) if limit is not None and limit >= 1 else limit
        return cls(ppl=split(ppl), protocol=protocol, tasks=split(tasks), limit=limit, seeds=seeds,
                   **{k: list(v) if isinstance(v, tuple) else v for k, v in rest.items()})


def evaluate(model, tokenizer, spec: EvalSpec, verbose: bool = False) -> dict:
    """Score one loaded model under `spec` -> {"perplexity": [...], "zeroshot": {...}} (keys present when asked)."""
    out: dict = {}
    lm = None
    if spec.tasks or (spec.ppl and spec.protocol == "lm-eval"):
        from ..integrations.lmeval import hflm

        context = max_context(model.config) or spec.seqlen
        if spec.ppl and spec.seqlen > context:
            raise LlmbinError(f"seqlen {spec.seqlen} is above the model's context of {context} tokens")
        # one wrapper, shared by ppl and tasks; tasks alone just cut long prompts at the model's context
        lm = hflm(model, tokenizer, spec.batch_size, min(spec.seqlen, context), verbose)
    if spec.ppl and spec.protocol == "gptq":
        out["perplexity"] = evaluate_ppl(model, tokenizer, spec.ppl, spec.seqlen, spec.max_windows, spec.bos)
    elif spec.ppl:
        from .lmeval_ppl import wikitext_perplexity

        out["perplexity"] = [wikitext_perplexity(model, tokenizer, spec.seqlen, spec.limit, spec.batch_size,
                                                 spec.seeds, lm, verbose)]
    if spec.tasks:
        from .zeroshot import evaluate_tasks

        out["zeroshot"] = evaluate_tasks(model, tokenizer, spec.tasks, spec.include_path, spec.limit, spec.num_fewshot,
                                         spec.batch_size, spec.seqlen, spec.seeds, lm, verbose)
    return out


def delta(result: dict, baseline: dict) -> dict:
    """Quantized minus baseline: perplexity (absolute and relative) and every task metric (absolute)."""
    out: dict = {"perplexity": [], "zeroshot": {}}
    for q, b in zip(result.get("perplexity", []), baseline.get("perplexity", [])):
        d = q["ppl"] - b["ppl"]
        out["perplexity"].append({"name": q["name"], "protocol": q["protocol"], "ppl": q["ppl"],
                                  "baseline_ppl": b["ppl"], "delta": d,
                                  "relative": d / b["ppl"] if b["ppl"] else math.inf})
    base_tasks = baseline.get("zeroshot", {}).get("tasks", {})
    for name, task in result.get("zeroshot", {}).get("tasks", {}).items():
        if name not in base_tasks:
            continue
        metrics = {}
        for metric, m in task["metrics"].items():
            b = base_tasks[name]["metrics"].get(metric, {}).get("value")
            if m["value"] is not None and b is not None:
                metrics[metric] = {"value": m["value"], "baseline": b, "delta": m["value"] - b}
        out["zeroshot"][name] = metrics
    return out


def render(result: dict, baseline: dict | None = None, label: str = "") -> list[str]:
    """Human lines: one per perplexity text and per task, with the baseline and delta when given."""
    from .zeroshot import headline

    lines = []
    d = delta(result, baseline) if baseline else None
    for i, r in enumerate(result.get("perplexity", [])):
        where = (f"seqlen {r['seqlen']}, {r['windows']} windows" if r["protocol"] == "gptq"
                 else f"{r['metric']}, max_length {r['max_length']}, {r['documents']} documents")
        line = f"{label}{r['name']}: ppl {r['ppl']:.4f} (protocol {r['protocol']}, {where}, {r['seconds']} s)"
        if d and i < len(d["perplexity"]):
            p = d["perplexity"][i]
            line += f" | baseline {p['baseline_ppl']:.4f}, delta {p['delta']:+.4f} ({100 * p['relative']:+.1f}%)"
        lines.append(line)
    for name, task in result.get("zeroshot", {}).get("tasks", {}).items():
        head = headline(task)
        if head is None:
            continue
        metric, m = head
        err = f" ± {m['stderr']:.4f}" if m["stderr"] is not None else ""
        line = (f"{label}{name}: {metric} {m['value']:.4f}{err} ({task['protocol']}, n={task['n_samples']}"
                f"/{task['n_total']}, version {task['version']})")
        if d and metric in d["zeroshot"].get(name, {}):
            z = d["zeroshot"][name][metric]
            line += f" | baseline {z['baseline']:.4f}, delta {z['delta']:+.4f}"
        lines.append(line)
    return lines


def evaluate_ref(ref: str, spec: EvalSpec, device: str = "cpu", verbose: bool = False) -> dict:
    """Load a model reference (packed dir or any model), score it, free it."""
    import gc

    model, tokenizer = load_any(ref, device)
    try:
        return {"model": ref, **evaluate(model, tokenizer, spec, verbose)}
    finally:
        del model
        gc.collect()


def evaluate_with_baseline(ref: str, spec: EvalSpec, device: str = "cpu", baseline: str | None = None,
                           verbose: bool = False) -> tuple[dict, list[str]]:
    """`llmbin eval`: the model, and optionally its full-precision baseline under the identical spec."""
    if spec.tasks:  # unknown task names fail before any model is loaded
        from ..integrations.lmeval import task_manager

        task_manager(spec.tasks, spec.include_path)
    record = {**evaluate_ref(ref, spec, device, verbose), "versions": versions(), "spec": spec.describe()}
    base = None
    if baseline:
        base = evaluate_ref(baseline, spec, device, verbose)
        record["baseline"] = base
        record["delta"] = delta(record, base)
    lines = render(record, base)
    if base:
        lines += render(base, label="baseline ")
    return record, lines
