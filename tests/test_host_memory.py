"""release_freed_memory: freed heap blocks go back to the system; release_mapped_pages: a mapped file's pages leave
the resident set without losing a value (both measured in /proc, not by trusting the call)."""
import sys

import pytest
import torch

from llmbin.host.memory import release_freed_memory, release_mapped_pages


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def anon_mb() -> float:
    return status_mb("RssAnon")


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


@pytest.mark.skipif(not sys.platform.startswith("linux") or not release_freed_memory(), reason="glibc on Linux only")
def test_mapped_file_pages_leave_the_resident_set_and_come_back_unchanged(tmp_path):
    # a private mapping, as torch maps safetensors shards: 32 MB of distinct values, every page read once
    n = 8 << 20
    values = torch.arange(n, dtype=torch.int32)
    values.numpy().tofile(tmp_path / "shard.bin")
    mapped = torch.from_file(str(tmp_path / "shard.bin"), shared=False, size=n, dtype=torch.int32)
    assert int(mapped.sum(dtype=torch.int64)) == n * (n - 1) // 2
    mapped[7] = -1  # a written (copy-on-write) page: it must survive the release
    before = status_mb("RssFile")
    advised = release_mapped_pages([mapped])
    after = status_mb("RssFile")
    if advised == 0:
        pytest.skip("this kernel has no MADV_PAGEOUT (Linux < 5.4)")
    assert advised >= 4 * n - 4096
    assert before - after > 16, (before, after)
    expected = values.clone()
    expected[7] = -1
    assert torch.equal(mapped, expected)  # faulted back from the file, the written page kept


def test_tensors_not_backed_by_a_file_are_left_alone():
    assert release_mapped_pages([torch.ones(1000)]) == 0
