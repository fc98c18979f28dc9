"""`llmbin methods | formats | models`: what this llmbin can run, store and load by name."""
from __future__ import annotations

import dataclasses

import click

from ..formats import FORMATS
from ..methods import METHODS
from ..models.loading import BUNDLED
from ..recipe import Recipe
from ..recipe.recipe import shipped_recipe_names


@click.command("methods")
def methods_command():
    """List quantization methods and their parameters."""
    for name, cls in sorted(METHODS.items()):
        click.echo(f"{name:8s} {cls.summary}")
        params = Recipe.default_for(name).params  # what `--method NAME` runs
        source = "shipped recipe " + name if params != cls.params_cls() else "method defaults"
        values = ", ".join(f"{f.name}={getattr(params, f.name)!r}" for f in dataclasses.fields(cls.params_cls))
        click.echo(f"{'':8s}   runs: {stages(Recipe.default_for(name))}")
        click.echo(f"{'':8s}   parameters ({source}): {values}")
    others = [name for name in shipped_recipe_names() if name not in METHODS]
    if others:
        click.echo("\nShipped recipes (--recipe NAME):")
        for name in others:
            recipe = Recipe.load(name)
            click.echo(f"{name:14s} method {recipe.method}; runs: {stages(recipe)}")


def stages(recipe: Recipe) -> str:
    """The stages `--method NAME` runs, in order."""
    parts = []
    pre = getattr(recipe.params, "preprocess", None)
    if pre is not None and pre.enabled:
        parts.append(f"pass 1 ({pre.pass1_epochs} block-training epoch(s)), LoRA preprocessing (r {pre.r}, "
                     f"{pre.epochs} epoch(s)) merged")
    epochs = getattr(recipe.params, "epochs", None)
    parts.append("layer-by-layer calibration" + (f" ({epochs} block-training epoch(s))" if epochs is not None else ""))
    d = recipe.distill
    if d.enabled:
        mix = f", {d.selfgen_share:.0%} written by the model" if d.selfgen_share else ""
        mix += ", the model writing what the text lacks" if d.fill == "selfgen" else ""
        parts.append(f"distillation ({d.nsamples} x {d.seqlen}-token windows{mix}, {d.epochs} epoch(s))")
    p = recipe.pipeline
    parts.append(f"embeddings/head {p.embeddings}" if p.embeddings != "none" else "embeddings/head in float")
    share = recipe.calibration.selfgen_share
    return " -> ".join(parts) + (f"; calibration {share:.0%} written by the model" if share else "")


@click.command("formats")
def formats_command():
    """List packed formats."""
    for name, cls in sorted(FORMATS.items()):
        click.echo(f"{name:9s} version {cls.version}: {cls.__doc__.strip().splitlines()[0] if cls.__doc__ else ''}")


@click.command("models")
def models_command():
    """List bundled model names (usable offline) and the other accepted references."""
    for name, spec in BUNDLED.items():
        click.echo(f"{name:18s} {spec.description}")
    click.echo("Also accepted: a local HF model directory, a .gguf file, or a Hugging Face hub id (online).")
