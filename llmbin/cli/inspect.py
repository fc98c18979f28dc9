"""`llmbin inspect`: what a packed checkpoint stores, module by module."""
from __future__ import annotations

import click

from ..checkpoint.inspect import inspect_checkpoint, render
from .errors import friendly_errors
from .options import write_json


@click.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write the report as JSON here.")
@friendly_errors
def inspect_command(path, json_path):
    """Per-module format, bits per weight (paper and all-in), bytes, and the kernel that would run."""
    report = inspect_checkpoint(path)
    click.echo(render(report))
    write_json(json_path, report)
