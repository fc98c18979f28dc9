"""`llmbin bench`: the packed-kernel speed table, and a checkpoint's prefill/decode speed against its source."""
from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from ..host.environment import cpu_name, machine_line
from ..host.files import atomic_write_text
from ..runtime.decode_bench import run_decode_bench
from ..runtime.kernel_bench import format_table, run_kernel_bench
from .errors import friendly_errors


def _parse_shape(ctx, param, values):
    try:
        return [tuple(int(v) for v in s.lower().split("x")) for s in values] or None
    except ValueError as exc:
        raise click.BadParameter(f"shapes look like 4096x4096, got {values}") from exc


def _parse_batches(ctx, param, values):
    """--batch 1 --batch 4, or --batch 1,4,16."""
    try:
        return [int(v) for s in values for v in str(s).split(",") if v.strip()] or None
    except ValueError as exc:
        raise click.BadParameter(f"batches look like 1,4,16, got {values}") from exc


@click.command("bench")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--shape", "shapes", multiple=True, callback=_parse_shape, help="N x K, e.g. 4096x4096 (repeatable)")
@click.option("--batch", "batches", multiple=True, callback=_parse_batches,
              help="batch M: repeatable or comma-separated (1,4,16); default 1,4,16,64")
@click.option("--planes", multiple=True, type=int, default=(1, 2), show_default=True, help="bit planes (repeatable)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write rows as JSON")
@click.option("--new-tokens", default=128, show_default=True, help="decode length for PATH")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when present)")
@click.option("--threads", type=int, help="torch CPU threads (default: torch's)")
@click.option("--budget", default=2.0, show_default=True, help="seconds of timing per shape and batch")
@friendly_errors
def bench_command(path, shapes, batches, planes, json_path, new_tokens, device, threads, budget):
    """Kernel speed table; given a packed checkpoint PATH, prefill/decode tokens/s of it and of its float32 and
    bf16 source (the kernel table then runs only with --shape)."""
    if threads:
        torch.set_num_threads(threads)
    if device in (None, "cpu"):  # the same brand covers CPUs of very different speed: say which one measured
        click.echo(f"CPU: {cpu_name()}; {machine_line()}")
    rows = []
    if path is None or shapes:
        rows = run_kernel_bench(shapes, batches, planes, None, device=device, budget_s=budget, log=click.echo)
    if path is not None:
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        decode = run_decode_bench(path, new_tokens, device=dev, log=click.echo)
        click.echo("\n" + format_table(decode))  # again, with the speedups
        rows = rows + decode
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_path, json.dumps(rows, indent=1))
