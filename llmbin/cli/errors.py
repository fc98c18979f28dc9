"""How a command fails: one line on stderr naming the problem and the fix, and a non-zero exit status."""
from __future__ import annotations

import functools
import sys

import click

from ..errors import LlmbinError
from ..host.files import disk_full


def friendly_errors(fn):
    """LlmbinError -> 'error: ...' and exit status 2; out of memory -> one line with what to lower, exit status 3."""
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
        except OSError as exc:
            if not disk_full(exc):
                raise
            click.echo(f"error: no space left on the device{f' writing {exc.filename}' if exc.filename else ''}; "
                       "free some space (or write elsewhere) and rerun", err=True)
            sys.exit(2)
    return wrapper


def torch_oom_errors():
    import torch

    return (torch.OutOfMemoryError, MemoryError)
