"""`llmbin` command line: thin wrappers over llmbin.api."""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .errors import LlmbinError


def friendly_errors(fn):
    """LlmbinError (and a few well-known failures) -> one line on stderr, exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LlmbinError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except torch_oom_errors() as exc:
            click.echo(f"error: out of memory ({str(exc).splitlines()[0][:100]}); lower --nsamples or "
                       "--set pipeline.batch_size=1, or --set pipeline.activation_cache=disk", err=True)
            sys.exit(3)
    return wrapper


def torch_oom_errors():
    import torch

    return (torch.OutOfMemoryError, MemoryError)


def write_json(path: str | None, data) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_suffix(Path(path).suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="llmbin")
@click.option("--offline", is_flag=True, help="Never reach the Hugging Face hub; fail fast naming what is missing.")
def main(offline):
    """llmbin: compress Hugging Face causal LMs to 1-2 bits per weight, store them packed, score and run them.

    \b
    llmbin quantize smollm2-135m --method ptq161 --dataset text.txt -o smol-1.61bit
    llmbin eval smol-1.61bit --ppl eval.txt
    llmbin inspect smol-1.61bit
    """
    if offline:
        import os

        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ[var] = "1"
        import huggingface_hub.constants  # read its environment at import: set the flag it already holds

        huggingface_hub.constants.HF_HUB_OFFLINE = True


@main.command()
@click.argument("model")
@click.option("-o", "--out", required=True, type=click.Path(), help="Output directory (packed HF checkpoint).")
@click.option("--method", default=None, help="Quantization method (see `llmbin methods`). Default: the recipe's, else ptq161. Without --recipe, a method "
                   "with a shipped recipe of its name (ptq161) uses that recipe.")
@click.option("--recipe", default=None, help="Recipe YAML file or shipped recipe name; flags below override it.")
@click.option("--bits", type=int, default=None, help="Bits for integer methods (rtn, gptq): 2, 3, 4 or 8.")
@click.option("--group-size", type=int, default=None, help="Columns per quantization group (-1: per row).")
@click.option("--dataset", default=None, help="Calibration text: a .txt/.jsonl/.parquet file, wikitext2, c4, ptb, or selfgen.")
@click.option("--nsamples", type=int, default=None, help="Calibration windows [128].")
@click.option("--seqlen", type=int, default=None, help="Tokens per calibration window [2048].")
@click.option("--seed", type=int, default=None, help="Seed of every random choice [0]; same seed, same bytes.")
@click.option("--device", default=None, help="Compute device for one layer at a time: cpu or cuda [cpu].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Method parameter (salient_ratio=0.2) or section key (pipeline.true_sequential=true); repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT's work area (same model, recipe, data).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
@click.option("-q", "--quiet", is_flag=True, help="No per-module log lines.")
@friendly_errors
def quantize(model, out, method, recipe, bits, group_size, dataset, nsamples, seqlen, seed, device, overrides,
             overwrite, resume, trust_remote_code, quiet):
    """Quantize MODEL (hub id, local dir, .gguf file or bundled name) and write a packed checkpoint to OUT."""
    from .api import quantize as run
    from .recipe import Recipe

    r = Recipe.load(recipe) if recipe else Recipe.default_for(method or "ptq161")
    if method and method != r.method:
        r = Recipe.create(method, calibration=r.to_dict()["calibration"], pipeline=r.to_dict()["pipeline"],
                          distill=r.to_dict()["distill"])
    for key, value in (("bits", bits), ("group_size", group_size)):
        if value is not None:
            r.set(key, value)
    for key, value in (("dataset", dataset), ("nsamples", nsamples), ("seqlen", seqlen), ("seed", seed)):
        if value is not None:
            r.set(f"calibration.{key}", value)
    if device:
        r.set("pipeline.device", device)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise LlmbinError(f"--set takes KEY=VALUE, got {item!r}")
        r.set(key.strip(), value.strip())
    qm = run(model, r, out=out, overwrite=overwrite, resume=resume, verbose=not quiet,
             trust_remote_code=trust_remote_code)
    from .checkpoint import bits_summary, read_quant_config
    from .model_size import describe, model_size

    bits_info = bits_summary(qm.results)
    click.echo(f"wrote {out}: {len(qm.results)} linears, {bits_info.get('bpw_paper')} bits/weight (paper), "
               f"{bits_info.get('bpw_all_in')} all-in, {qm.stats['quantize_seconds']} s, peak RSS "
               f"{qm.stats['peak_rss_mb']:.0f} MB")
    click.echo(f"whole model: {describe(model_size(out, read_quant_config(out)))}")


@main.command(name="eval")
@click.argument("model")
@click.option("--ppl", default=None, help="Comma-separated texts: files (.txt/.jsonl/.parquet) or wikitext2, c4, ptb.")
@click.option("--protocol", type=click.Choice(["gptq", "lm-eval"]), default="gptq", show_default=True,
              help="Perplexity protocol: gptq (token ppl over fixed windows) or lm-eval (its wikitext task, word ppl).")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per perplexity window (lm-eval: max length).")
@click.option("--max-windows", type=int, default=None, help="Use only the first N windows.")
@click.option("--bos", is_flag=True, help="Put a BOS token before each window (Gemma needs it).")
@click.option("--tasks", default=None, help="Comma-separated lm-eval tasks (zero-shot unless --num-fewshot).")
@click.option("--include-path", multiple=True, type=click.Path(), help="Directory of local lm-eval task YAML files; repeatable.")
@click.option("--limit", type=float, default=None, help="Only the first N examples (documents) per task; < 1: a fraction.")
@click.option("--num-fewshot", type=int, default=None, help="Few-shot examples per prompt [the task's, else 0].")
@click.option("--batch-size", type=int, default=4, show_default=True, help="lm-eval batch size.")
@click.option("--seed", type=int, default=None, help="One seed for lm-eval's random, numpy, torch and few-shot sampler [0/1234/1234/1234].")
@click.option("--baseline", default=None, help="Full-precision model scored with the identical protocol; shows the delta.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write results as JSON here.")
@click.option("-v", "--verbose", is_flag=True, help="lm-eval's own log lines.")
@friendly_errors
def eval_(model, ppl, protocol, seqlen, max_windows, bos, tasks, include_path, limit, num_fewshot, batch_size, seed,
          baseline, device, json_path, verbose):
    """Score MODEL (packed llmbin dir, or any model reference): perplexity under a labelled protocol, lm-eval tasks."""
    from .eval.suite import EvalSpec, evaluate_with_baseline

    spec = EvalSpec.from_options(ppl, protocol, tasks, limit, seed, seqlen=seqlen, max_windows=max_windows, bos=bos,
                                 include_path=include_path, num_fewshot=num_fewshot, batch_size=batch_size)
    record, lines = evaluate_with_baseline(model, spec, device, baseline, verbose)
    for line in lines:
        click.echo(line)
    write_json(json_path, record)


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the report as JSON here.")
@friendly_errors
def inspect(path, json_path):
    """Per-module format, bits per weight (paper and all-in), bytes, and the kernel that would run."""
    from .inspect import inspect_checkpoint, render

    report = inspect_checkpoint(path)
    click.echo(render(report))
    write_json(json_path, report)


@main.command()
def methods():
    """List quantization methods and their parameters."""
    import dataclasses

    from .methods import METHODS
    from .recipe import Recipe

    for name, cls in sorted(METHODS.items()):
        click.echo(f"{name:8s} {cls.summary}")
        params = Recipe.default_for(name).params  # what `--method NAME` runs
        source = "shipped recipe " + name if params != cls.params_cls() else "method defaults"
        values = ", ".join(f"{f.name}={getattr(params, f.name)!r}" for f in dataclasses.fields(cls.params_cls))
        click.echo(f"{'':8s}   parameters ({source}): {values}")


@main.command()
def formats():
    """List packed formats."""
    from .formats import FORMATS

    for name, cls in sorted(FORMATS.items()):
        click.echo(f"{name:9s} version {cls.version}: {cls.__doc__.strip().splitlines()[0] if cls.__doc__ else ''}")


@main.command()
def models():
    """List bundled model names (usable offline) and the other accepted references."""
    from .models.loading import BUNDLED

    for name, spec in BUNDLED.items():
        click.echo(f"{name:18s} {spec.description}")
    click.echo("Also accepted: a local HF model directory, a .gguf file, or a Hugging Face hub id (online).")


@main.command(name="replay-check")
@click.argument("model")
@click.option("--dataset", default=None, help="Text to run (as for quantize); default: random token ids.")
@click.option("--nsamples", type=int, default=4, show_default=True, help="Windows.")
@click.option("--seqlen", type=int, default=128, show_default=True, help="Tokens per window.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=2, show_default=True, help="Windows per forward call.")
@click.option("--tolerance", type=float, default=1e-5, show_default=True, help="Largest accepted |difference| (float32).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
@friendly_errors
def replay_check_command(model, dataset, nsamples, seqlen, seed, batch_size, tolerance, trust_remote_code):
    """Check that layer-by-layer calibration replays MODEL's own forward (float32, no quantization).

    Every decoder layer's replayed output and the logits computed from the last one are compared with an
    ordinary forward pass of the model; exit status 2 when any differs by more than --tolerance.
    """
    import torch

    from .data import calibration_windows, load_text, token_stream
    from .models.loading import load_model
    from .replay import replay_check

    m, tokenizer = load_model(model, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if dataset:
        ids = calibration_windows(token_stream(tokenizer, load_text(dataset, split="calibration")), nsamples, seqlen, seed)
    else:
        vocab = m.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))
    report = replay_check(m, ids, batch_size)
    for i, err in enumerate(report["layers"]):
        click.echo(f"layer {i:3d}: max |replay - model| = {err:.3g}")
    click.echo(f"logits   : max |replay - model| = {report['logits']:.3g}")
    if report["max_abs"] > tolerance:
        raise LlmbinError(f"the layer-by-layer replay differs from {model}'s own forward by {report['max_abs']:.3g} "
                          f"(> {tolerance}); calibration of this architecture would be wrong, please report it")
    click.echo(f"ok: replay equals the model's forward within {tolerance}")


@main.command()
@click.argument("model")
@click.option("--methods", required=True, help="Comma-separated methods (see `llmbin methods`) or shipped recipe names: one row each.")
@click.option("--recipes", default=None, metavar="NAME=FILE,...", help="Recipe file for a row (default: the shipped recipe named like the method, else the method's defaults).")
@click.option("--set", "overrides", multiple=True, metavar="NAME.KEY=VALUE", help="Parameter of one row (ptq161.epochs=5); repeatable.")
@click.option("--dataset", required=True, help="Calibration text, the same for every method.")
@click.option("--nsamples", type=int, default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=int, default=2048, show_default=True, help="Tokens per calibration and perplexity window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Calibration seed.")
@click.option("--ppl", default=None, help="Comma-separated evaluation texts (as for `llmbin eval`).")
@click.option("--protocol", type=click.Choice(["gptq", "lm-eval"]), default="gptq", show_default=True)
@click.option("--max-windows", type=int, default=None, help="Use only the first N perplexity windows.")
@click.option("--tasks", default=None, help="Comma-separated lm-eval tasks.")
@click.option("--include-path", multiple=True, type=click.Path(), help="Directory of local lm-eval task YAML files; repeatable.")
@click.option("--limit", type=float, default=None, help="Only the first N examples per task.")
@click.option("--num-fewshot", type=int, default=None)
@click.option("--batch-size", type=int, default=4, show_default=True, help="lm-eval batch size.")
@click.option("--device", default="cpu", show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(), help="Directory for report.md, results.json, ppl_vs_bits.png.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep each packed checkpoint under OUT/checkpoints.")
@click.option("--resume", is_flag=True, help="Reuse rows of OUT/results.json made under the identical protocol.")
@click.option("--note", "notes", multiple=True, help="A line for the report's notes; repeatable.")
@friendly_errors
def compare(model, methods, recipes, overrides, dataset, nsamples, seqlen, seed, ppl, protocol, max_windows, tasks,
            include_path, limit, num_fewshot, batch_size, device, out, keep_checkpoints, resume, notes):
    """Quantize MODEL with several methods, score all (and the full-precision model) under one protocol, report."""
    import shlex

    from .eval.compare import resolve_entries, run_compare
    from .eval.suite import EvalSpec

    pairs = [p.partition("=") for p in (recipes or "").split(",") if p.strip()]
    if any(not sep for _, sep, _ in pairs):
        raise LlmbinError(f"--recipes takes NAME=FILE[,NAME=FILE], got {recipes!r}")
    entries = resolve_entries([m.strip() for m in methods.split(",") if m.strip()],
                              {k.strip(): v.strip() for k, _, v in pairs}, list(overrides))
    spec = EvalSpec.from_options(ppl, protocol, tasks, limit, None, seqlen=seqlen, max_windows=max_windows,
                                 include_path=include_path, num_fewshot=num_fewshot, batch_size=batch_size)
    command = shlex.join(["llmbin", *sys.argv[1:]]) if Path(sys.argv[0]).name == "llmbin" else ""
    results = run_compare(model, entries, {"dataset": dataset, "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
                          spec, out, device, keep_checkpoints, resume, command, list(notes), echo=click.echo)
    click.echo((Path(out) / "report.md").read_text().split("\n\nPaper bits")[0])
    failed = [m["label"] for m in results["methods"] if m.get("error")]
    if failed:
        raise LlmbinError(f"{len(failed)} method(s) failed ({', '.join(failed)}); the others are in {out}/report.md")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(), help="Output directory (the distilled packed checkpoint).")
@click.option("--teacher", default=None, help="Full-precision model to distill from [the checkpoint's source model].")
@click.option("--dataset", default=None, help="Training text (as for quantize) [the checkpoint's calibration text].")
@click.option("--recipe", default=None, help="Recipe YAML (or shipped name) whose distill: section gives the options.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Distillation option (nsamples=64, loss=kl, ce_weight=0.1; see the recipe's distill: section); repeatable.")
@click.option("--device", default="cpu", show_default=True, help="Compute device: cpu or cuda.")
@click.option("--memory-budget-mb", type=int, default=0, help="Refuse when the pre-flight estimate exceeds this (0: no check).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--resume", is_flag=True, help="Continue an interrupted distillation from OUT's work area.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@friendly_errors
def distill(checkpoint, out, teacher, dataset, recipe, overrides, device, memory_budget_mb, overwrite, resume, quiet):
    """Train the continuous tensors of packed CHECKPOINT (codes frozen) against its full-precision teacher into OUT."""
    from .api import distill as run
    from .distill.options import DistillOptions
    from .recipe import Recipe, set_field

    options = Recipe.load(recipe).distill if recipe else DistillOptions()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise LlmbinError(f"--set takes KEY=VALUE, got {item!r}")
        set_field(options, key.strip().removeprefix("distill."), value.strip(), "distill")
    options.check()
    result = run(checkpoint, out, teacher, dataset, options, device, resume, overwrite, not quiet, memory_budget_mb)
    s = result.stats
    click.echo(f"wrote {out}: held-out distillation loss {s['loss_before']:.4f} -> {s['loss_after']:.4f} "
               f"({'kept' if s['kept'] else 'no gain: original tensors kept'}), {s['steps']} steps on {s['modules']} "
               f"linears, {s['seconds']} s, peak RSS {s['peak_rss_mb']:.0f} MB")


def _register_optional_commands() -> None:
    try:
        from .bench import bench_command
    except ImportError:
        return
    main.add_command(bench_command, name="bench")


def _register_generate() -> None:
    from .generate import generate_command

    main.add_command(generate_command, name="generate")


_register_optional_commands()
_register_generate()

if __name__ == "__main__":
    main()
