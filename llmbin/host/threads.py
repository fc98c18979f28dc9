"""torch's CPU thread count for one block of work, restored after it."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def cpu_threads(n: int | None):
    """torch's CPU thread count set to n inside the block (None or 0: unchanged), restored after it. For work made
    of many tiny ops, where handing them to other threads costs more than it saves."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)
