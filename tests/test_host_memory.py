"""release_freed_memory: freed heap blocks go back to the system (measured in /proc, not by trusting the call)."""
import sys

import pytest
import torch

from llmbin.host.memory import release_freed_memory


def anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or not release_freed_memory(), reason="glibc on Linux only")
def test_freed_heap_blocks_below_the_mmap_threshold_leave_the_resident_set():
    # 100 KB blocks sit below glibc's mmap threshold, so they come from the heap; the last one, kept alive, pins the
    # heap's top so that free() alone cannot shrink it: 200 MB stay resident until they are trimmed
    blocks = [torch.ones(25_000) for _ in range(2000)]
    pin = blocks[-1]
    del blocks
    before = anon_mb()
    release_freed_memory()
    after = anon_mb()
    assert before - after > 100, (before, after)
    assert float(pin.sum()) == 25_000
