"""The process's memory: its peak, and freed heap handed back to the system.

glibc keeps freed blocks below its (self-raising) mmap threshold in the process heap, and returns heap pages only
from the top: a layer-by-layer run that frees each layer's temporaries (Hessians, fake-quant copies, activations)
would otherwise keep them all resident, and its RSS would climb by gigabytes over a 0.5B model with nothing live.
"""
from __future__ import annotations

import ctypes
import resource

try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _TRIM = _LIBC.malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to trim
    _TRIM = None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; -> whether the allocator could.

    No gc.collect() here: tensors are freed by reference counting, and a collection costs ~0.2 s once transformers
    is imported (a caller that needs one, e.g. before a peak measurement, runs it first).
    """
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
