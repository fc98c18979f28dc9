"""`llmbin quantize`: a model and a recipe in, a packed checkpoint out."""
from __future__ import annotations

import click

from .. import api
from ..checkpoint.reader import read_quant_config
from ..checkpoint.size import describe, model_size
from ..checkpoint.writer import bits_summary
from ..recipe import Recipe
from .errors import friendly_errors
from .options import parse_set


@click.command("quantize")
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
def quantize_command(model, out, method, recipe, bits, group_size, dataset, nsamples, seqlen, seed, device, overrides,
             overwrite, resume, trust_remote_code, quiet):
    """Quantize MODEL (hub id, local dir, .gguf file or bundled name) and write a packed checkpoint to OUT."""
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
    for key, value in parse_set(overrides):
        r.set(key, value)
    qm = api.quantize(model, r, out=out, overwrite=overwrite, resume=resume, verbose=not quiet,
             trust_remote_code=trust_remote_code)
    bits_info = bits_summary(qm.results)
    click.echo(f"wrote {out}: {len(qm.results)} linears, {bits_info.get('bpw_paper')} bits/weight (paper), "
               f"{bits_info.get('bpw_all_in')} all-in, {qm.stats['quantize_seconds']} s, peak RSS "
               f"{qm.stats['peak_rss_mb']:.0f} MB")
    click.echo(f"whole model: {describe(model_size(out, read_quant_config(out)))}")
