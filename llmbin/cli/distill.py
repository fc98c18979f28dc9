"""`llmbin distill`: train a packed checkpoint's continuous tensors against its full-precision teacher."""
from __future__ import annotations

import click

from .. import api
from ..distill.options import DistillOptions
from ..recipe import Recipe, set_field
from .errors import friendly_errors
from .options import parse_set


@click.command("distill")
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
def distill_command(checkpoint, out, teacher, dataset, recipe, overrides, device, memory_budget_mb, overwrite, resume, quiet):
    """Train the continuous tensors of packed CHECKPOINT (codes frozen) against its full-precision teacher into OUT."""
    options = Recipe.load(recipe).distill if recipe else DistillOptions()
    for key, value in parse_set(overrides):
        set_field(options, key.removeprefix("distill."), value, "distill")
    options.check()
    result = api.distill(checkpoint, out, teacher, dataset, options, device, resume, overwrite, not quiet, memory_budget_mb)
    s = result.stats
    click.echo(f"wrote {out}: held-out distillation loss {s['loss_before']:.4f} -> {s['loss_after']:.4f} "
               f"({'kept' if s['kept'] else 'no gain: original tensors kept'}), {s['steps']} steps on {s['modules']} "
               f"linears, {s['seconds']} s, peak RSS {s['peak_rss_mb']:.0f} MB")
