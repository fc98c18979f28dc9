"""`llmbin compare`: several recipes on one model, scored under one protocol, one report."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ..compare.checkpoint_rows import parse_checkpoint_rows
from ..compare.gguf_rows import parse_gguf_rows
from ..compare.run import resolve_entries, run_compare
from ..errors import LlmbinError
from ..eval.suite import EvalSpec
from .errors import friendly_errors


@click.command("compare")
@click.argument("model")
@click.option("--methods", default="", help="Comma-separated methods (see `llmbin methods`) or shipped recipe names: one row each.")
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
@click.option("--gguf", "ggufs", multiple=True, metavar="[LABEL=]FILE.gguf",
              help="A llama.cpp GGUF file as a row, scored by the same protocol; repeatable.")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="[LABEL=]DIR",
              help="A finished llmbin checkpoint of MODEL as a row (made earlier or elsewhere), scored by the same "
                   "protocol; repeatable.")
@friendly_errors
def compare_command(model, methods, recipes, overrides, dataset, nsamples, seqlen, seed, ppl, protocol, max_windows, tasks,
            include_path, limit, num_fewshot, batch_size, device, out, keep_checkpoints, resume, notes, ggufs,
            checkpoints):
    """Quantize MODEL with several methods, score all (and the full-precision model) under one protocol, report."""
    if not methods.strip() and not ggufs and not checkpoints:
        raise LlmbinError("nothing to compare: pass --methods M1,M2, --checkpoint DIR and/or --gguf FILE.gguf")
    pairs = [p.partition("=") for p in (recipes or "").split(",") if p.strip()]
    if any(not sep for _, sep, _ in pairs):
        raise LlmbinError(f"--recipes takes NAME=FILE[,NAME=FILE], got {recipes!r}")
    entries = resolve_entries([m.strip() for m in methods.split(",") if m.strip()],
                              {k.strip(): v.strip() for k, _, v in pairs}, list(overrides))
    spec = EvalSpec.from_options(ppl, protocol, tasks, limit, None, seqlen=seqlen, max_windows=max_windows,
                                 include_path=include_path, num_fewshot=num_fewshot, batch_size=batch_size)
    command = shlex.join(["llmbin", *sys.argv[1:]]) if Path(sys.argv[0]).name == "llmbin" else ""
    results = run_compare(model, entries, {"dataset": dataset, "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
                          spec, out, device, keep_checkpoints, resume, command, list(notes), echo=click.echo,
                          gguf=parse_gguf_rows(ggufs), checkpoints=parse_checkpoint_rows(checkpoints))
    click.echo((Path(out) / "report.md").read_text().split("\n\nPaper bits")[0])
    failed = [m["label"] for m in results["methods"] if m.get("error")]
    if failed:
        raise LlmbinError(f"{len(failed)} method(s) failed ({', '.join(failed)}); the others are in {out}/report.md")
