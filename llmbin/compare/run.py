"""`llmbin compare`: quantize one model with several methods, score all under one protocol, report.

Every method gets the same calibration windows (dataset, nsamples, seqlen, seed override each recipe)
and the same EvalSpec; the full-precision model is scored first as the reference. Quantization runs
in this process through llmbin.recipe.run; its peak RSS is measured per method by resetting the
kernel's high-water mark before each one (/proc/self/clear_refs), so methods run later are not charged
for earlier ones. Results are rewritten after every model, so an interrupted run keeps what it finished
(and --resume skips what is already there under the identical protocol).
"""
from __future__ import annotations

import gc
import json
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..checkpoint.inspect import inspect_checkpoint
from ..errors import LlmbinError
from ..eval.suite import EvalSpec, evaluate_ref
from ..host.environment import versions
from ..host.memory import peak_rss_mb, release_freed_memory
from ..methods import METHODS
from ..models.loading import default_dtype
from ..recipe import SHIPPED_DIR, Recipe
from ..recipe.run import run_recipe
from .checkpoint_rows import checkpoint_record
from .gguf_rows import gguf_record
from .report import write_report


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def resolve_entries(labels: list[str], recipe_files: dict[str, str] | None = None,
                    overrides: list[str] | None = None) -> list[tuple[str, Recipe]]:
    """Each label -> (label, Recipe): its --recipes file, else a registered method (Recipe.default_for), else a
    shipped recipe."""
    recipe_files = dict(recipe_files or {})
    if len(set(labels)) != len(labels):
        raise LlmbinError(f"--methods lists a name twice: {','.join(labels)}")
    stray = sorted(set(recipe_files) - set(labels))
    if stray:
        raise LlmbinError(f"--recipes names {', '.join(stray)}, which --methods does not list")
    entries = []
    for label in labels:
        if label in recipe_files:
            recipe = Recipe.load(recipe_files[label])
        elif label in METHODS:
            recipe = Recipe.default_for(label)
        elif label in shipped_recipes():
            recipe = Recipe.load(label)
        else:
            raise LlmbinError(f"method {label!r} is not registered; available: {', '.join(sorted(METHODS))} "
                              f"(or a shipped recipe: {', '.join(shipped_recipes())}; or --recipes {label}=FILE)")
        entries.append((label, recipe))
    by_label = dict(entries)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        # the longest label that prefixes KEY: shipped recipe names may hold dots (pbllm-1.7.salient_ratio=0.2)
        label = max((x for x in labels if key.startswith(x + ".")), key=len, default=None)
        if not sep or label is None:
            raise LlmbinError(f"--set takes METHOD.KEY=VALUE with METHOD one of {', '.join(labels)}, got {item!r}")
        by_label[label].set(key[len(label) + 1:], value.strip())
    return entries


class PeakRSS:
    """Peak resident memory of this process since the last reset (Linux VmHWM; ru_maxrss elsewhere)."""

    def __init__(self):
        self.kind = "reset before each method (Linux VmHWM)"

    def reset(self) -> None:
        gc.collect()
        release_freed_memory()  # so the next peak starts low
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "over the process lifetime (ru_maxrss: no reset here, so later methods include earlier peaks)"

    def read_mb(self) -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:") and self.kind.startswith("reset"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return peak_rss_mb()


def method_recipe(recipe: Recipe) -> dict:
    """The recipe a row records and is reused by: without pipeline.sensitivity, a measurement of the run."""
    data = recipe.to_dict()
    data["pipeline"].pop("sensitivity", None)
    return data


def same_recipe(old, new) -> bool:
    """Equal, where a key the older row lacks counts as equal when the new value is off (0, false, empty): a
    setting added to recipes later, at its default, does not make earlier rows stale."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(same_recipe(old[k], v) if k in old else v in (0, 0.0, False, None, [], {}) for k, v in new.items()) \
            and set(old) <= set(new)
    return old == new


def read_sensitivity(log_file: Path) -> dict[str, float]:
    """module -> its relative output error on the calibration inputs as the run logged it (rel_output_error; for
    PTQ1.61, herr_gptq: before block training)."""
    found = {}
    for line in log_file.read_text().splitlines():
        record = json.loads(line)
        value = record.get("rel_output_error", record.get("herr_gptq"))
        if value is not None and "module" in record:
            found[record["module"]] = value
    return found


def reference_bits(device: str) -> dict:
    """Bits per weight the unquantized model is scored at: llmbin loads float32 on CPU, bfloat16 on GPU."""
    import torch

    bits = 8 * torch.empty(0, dtype=default_dtype(device)).element_size()
    return {"bpw_paper": bits, "bpw_all_in": bits}


def _failed(record: dict, exc: Exception, echo) -> None:
    record["error"] = _error_line(exc)
    echo(f"{record['label']}: failed: {record['error']}")


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _previous(out_dir: Path, header: dict) -> dict | None:
    path = out_dir / "results.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    same = all(old.get(k) == header[k] for k in ("model", "calibration", "eval"))
    return old if same else None


def run_compare(model_ref: str, entries: list[tuple[str, Recipe]], calibration: dict, spec: EvalSpec,
                out_dir: str | Path, device: str = "cpu", keep_checkpoints: bool = False, resume: bool = False,
                command: str = "", notes: list[str] | None = None, echo=print,
                gguf: list[tuple[str, Path]] | None = None, checkpoints: list[tuple[str, Path]] | None = None) -> dict:
    """Quantize and score every entry, score every finished llmbin checkpoint and GGUF row, write the report after
    each; -> results.json's data."""
    if spec.tasks:  # unknown task names fail before anything is quantized
        from ..integrations.lmeval import task_manager

        task_manager(spec.tasks, spec.include_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for _, recipe in entries:
        for key, value in calibration.items():
            recipe.set(f"calibration.{key}", value)
        recipe.set("pipeline.device", device)
        recipe.set("pipeline.sensitivity", True)  # the report's per-layer table
    peak = PeakRSS()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = {"model": model_ref, "command": command, "created": created, "versions": versions(),
               "calibration": calibration, "eval": spec.describe(), "peak_rss_kind": peak.kind,
               "notes": list(notes or []), "reference": None, "methods": []}
    previous = _previous(out_dir, results) if resume else None
    done = {m["label"]: m for m in (previous or {}).get("methods", []) if not m.get("error")}

    def save():  # rows of the previous run not reached yet stay on disk, in case this run dies too
        labels = {m["label"] for m in results["methods"]}
        write_report({**results, "methods": results["methods"] + [m for k, m in done.items() if k not in labels]},
                     out_dir)

    if previous and previous.get("reference"):
        results["reference"] = previous["reference"]
        echo("reference: reused from the previous results.json")
    else:
        echo(f"reference: scoring {model_ref} at full precision")
        results["reference"] = {"label": "full precision", "bits": reference_bits(device),
                                **evaluate_ref(model_ref, spec, device)}
    save()

    scratch = out_dir / "checkpoints" if keep_checkpoints else Path(tempfile.mkdtemp(prefix="llmbin-compare-"))
    try:
        for label, recipe in entries:
            old = done.get(label)
            if old and same_recipe(old.get("recipe"), method_recipe(recipe)):
                echo(f"{label}: reused from the previous results.json")
                results["methods"].append(old)
                continue
            record = {"label": label, "method": recipe.method, "recipe": method_recipe(recipe), "error": None}
            checkpoint = scratch / label
            try:
                echo(f"{label}: quantizing ({recipe.method})")
                peak.reset()
                start = time.perf_counter()
                qm = run_recipe(model_ref, recipe, out=checkpoint, overwrite=True, verbose=False)
                record["quantize_seconds"] = round(time.perf_counter() - start, 1)
                record["peak_rss_mb"] = round(peak.read_mb(), 1)
                stats = getattr(qm, "stats", None) or qm.info  # where api.quantize keeps its own timing
                record["api_quantize_seconds"] = stats.get("quantize_seconds")  # without packing and writing
                trained = (qm.info or {}).get("distill")  # a recipe's distill stage: did it help, and was it kept
                if trained:
                    record["distill"] = {k: trained[k] for k in ("loss_before", "loss_after", "kept", "steps")}
                del qm
                gc.collect()
                record["sensitivity"] = read_sensitivity(checkpoint / "quant_log.jsonl")
                inspected = inspect_checkpoint(checkpoint)
                totals = inspected["totals"]
                record["bits"] = {"bpw_paper": totals["bpw_paper"], "bpw_all_in": totals["bpw_all_in"],
                                  "quantized_bytes": totals["quantized_bytes"]}
                record["size"] = inspected["whole_model"]
                if results["reference"].get("size") is None:  # the source at fp16, for the table's first row
                    params = inspected["whole_model"]["parameters"]
                    results["reference"]["size"] = {"file_bytes": 2 * params, "parameters": params,
                                                    "bits_per_parameter": 16.0, "kind": "source at fp16"}
                echo(f"{label}: scoring the packed checkpoint")
                start = time.perf_counter()
                record.update(evaluate_ref(str(checkpoint), spec, device))
                record["model"] = model_ref
                record["eval_seconds"] = round(time.perf_counter() - start, 1)
            except Exception as exc:  # noqa: BLE001  (one failing method must not lose the others' results)
                _failed(record, exc, echo)
            finally:
                if not keep_checkpoints:
                    shutil.rmtree(checkpoint, ignore_errors=True)
            results["methods"].append(record)
            save()
    finally:
        if not keep_checkpoints:
            shutil.rmtree(scratch, ignore_errors=True)
    scored = [(label, path, checkpoint_record, "an llmbin checkpoint") for label, path in checkpoints or []]
    scored += [(label, path, gguf_record, "llama.cpp GGUF, dequantized by transformers") for label, path in gguf or []]
    for label, path, make_record, what in scored:
        record = make_record(label, path)
        old = done.get(label)
        if old and old.get("file_stamp") == record["file_stamp"]:
            echo(f"{label}: reused from the previous results.json")
            results["methods"].append(old)
            continue
        echo(f"{label}: scoring {path.name} ({what})")
        start = time.perf_counter()
        try:
            record.update(evaluate_ref(str(path), spec, device))
            record["eval_seconds"] = round(time.perf_counter() - start, 1)
        except Exception as exc:  # noqa: BLE001  (one failing row must not lose the others' results)
            _failed(record, exc, echo)
        results["methods"].append(record)
        save()
    return results
