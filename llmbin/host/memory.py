"""The process's memory: its peak, freed heap handed back to the system, and mapped checkpoint pages dropped.

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
    _LIBC = _TRIM = None


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system; -> whether the allocator could.

    No gc.collect() here: tensors are freed by reference counting, and a collection costs ~0.2 s once transformers
    is imported (a caller that needs one, e.g. before a peak measurement, runs it first).
    """
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


def _proc_kb_field(path: str, key: str) -> int | None:
    """A "Key:  N kB" line of a Linux /proc file, in bytes (None where there is none)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    return _proc_kb_field("/proc/self/status", "VmRSS") or 0


def resident_tensor_bytes(module) -> int:
    """Bytes of a torch module's parameters and buffers held on the CPU, each shared storage counted once."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.device.type == "cpu" and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def available_bytes() -> int | None:
    """Memory the system can give this process now without swapping (Linux MemAvailable; None elsewhere)."""
    return _proc_kb_field("/proc/meminfo", "MemAvailable")


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_MADV_PAGEOUT = 21  # Linux 5.4+: reclaim now; clean file pages are dropped, written ones kept (or swapped)


def _file_maps() -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of files (Linux)."""
    try:
        lines = open("/proc/self/maps").read().splitlines()
    except OSError:
        return []
    maps = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[5].startswith("/"):
            start, end = (int(v, 16) for v in parts[0].split("-"))
            maps.append((start, end))
    return maps


_maps_seen: list[tuple[int, int]] = []  # the last read of the file mappings: a packed model's ~200 layers share a few


def _file_map_of(ptr: int, size: int) -> tuple[int, int] | None:
    """The file mapping holding [ptr, ptr + size), from the last read of /proc/self/maps where it holds the range
    (~2 ms a read, for every layer of a model otherwise). A stale entry can only call anonymous memory file-backed;
    MADV_PAGEOUT loses nothing even then (written pages are kept or swapped), so it costs at most some speed."""
    global _maps_seen
    for fresh in (False, True):
        if fresh:
            _maps_seen = _file_maps()
        for start, end in _maps_seen:
            if start <= ptr and ptr + size <= end:
                return start, end
    return None


def release_mapped_pages(tensors) -> int:
    """Reclaim this process's resident pages of the file mappings that back `tensors` (a checkpoint's shards, mapped
    by safetensors); -> bytes advised.

    Once a kernel has repacked a layer into its own buffers, the mapped on-disk tensors are read again only to save
    or re-prepare the model: keeping them resident doubles a packed model's memory. MADV_PAGEOUT drops a page only
    where that loses nothing (an unwritten page of a file: a later read faults it back from the page cache or the
    file; a written copy-on-write page is kept or swapped). Not Linux, an older kernel or no libc: nothing is
    reclaimed, which costs memory only.
    """
    if _LIBC is None:
        return 0
    page = resource.getpagesize()
    ranges = set()
    for t in tensors:
        storage = t.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        found = _file_map_of(ptr, size)
        if found is not None:
            ranges.add((ptr // page * page, min(found[1], -(-(ptr + size) // page) * page)))
    advised = 0
    for lo, hi in sorted(ranges):
        if _LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_PAGEOUT) == 0:
            advised += hi - lo
    return advised
