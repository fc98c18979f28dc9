"""Building and loading the native CPU extension (the SOURCES below and the headers they include).

It compiles with torch.utils.cpp_extension on first use, once per torch, Python and kernel source, under
$LLMBIN_CACHE/torch_extensions (default ~/.cache/llmbin/torch_extensions), so checkouts with different kernels
never rebuild each other's. When it cannot be built, `load_extension()` returns None and `build_error()` says why.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ...host.files import cache_root

HERE = Path(__file__).parent
# translation units; headers are included
SOURCES = [HERE / "bindings.cpp", HERE / "decode_attention.cpp", HERE / "prefill_attention.cpp",
           HERE / "layer_ops.cpp"]
NAME = "llmbin_cpu_lut"
STAMP = "llmbin-built.txt"

_ext = None
_error: str | None = None
_lock = threading.Lock()


def cache_dir() -> Path:
    text = b"".join(p.read_bytes() for p in sorted(HERE.glob("*.cpp")) + sorted(HERE.glob("*.h")))
    source = hashlib.sha1(text).hexdigest()[:10]
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}-{source}"
    sanitize = os.environ.get("LLMBIN_CPU_SANITIZE")
    return cache_root() / "torch_extensions" / (f"cpu_lut-{tag}" + (f"-{sanitize.replace(',', '-')}" if sanitize else ""))


def _flags() -> tuple[list[str], list[str]]:
    """Compiler and linker flags; LLMBIN_CPU_SANITIZE=address,undefined builds a sanitized copy (benchmarks/sanitizers:
    run it with the sanitizer runtime preloaded)."""
    cflags, ldflags = ["-O3", "-fopenmp"], ["-fopenmp"]
    sanitize = os.environ.get("LLMBIN_CPU_SANITIZE")
    if sanitize:
        cflags = ["-O1", "-g", "-fopenmp", f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
        ldflags = ["-fopenmp", f"-fsanitize={sanitize}"]
    return cflags, ldflags


def load_extension():
    """The compiled module, or None (and `build_error()` says why) when it cannot be built."""
    global _ext, _error
    if _ext is not None or _error is not None:
        return _ext
    with _lock:
        if _ext is None and _error is None:
            try:
                from torch.utils.cpp_extension import load

                build = cache_dir()
                build.mkdir(parents=True, exist_ok=True)
                with _build_guard(build):
                    cflags, ldflags = _flags()
                    ext = _load_built(build, cflags + ldflags)
                    if ext is None:
                        if not any(build.glob("*.so")):
                            print(f"llmbin: compiling the native CPU kernel into {build} (once, about a minute)",
                                  file=sys.stderr, flush=True)
                        stamp = _stamp(cflags + ldflags)  # before `load`, which appends to the lists it is given
                        ext = load(name=NAME, sources=[str(p) for p in SOURCES], extra_cflags=list(cflags),
                                   extra_ldflags=list(ldflags), build_directory=str(build),
                                   verbose=bool(os.environ.get("LLMBIN_VERBOSE_BUILD")))
                        (build / STAMP).write_text(stamp)
                _register_fakes()
                _ext = ext
            except Exception as exc:  # noqa: BLE001 - any build failure means: fall back, loudly
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                _error = f"the C++ kernel could not be built ({type(exc).__name__}: {lines[-1] if lines else ''})"
                warnings.warn(f"llmbin: {_error}; bit-plane layers on CPU run on the slower torch backend instead",
                              RuntimeWarning, stacklevel=3)
    return _ext


def _stamp(flags: list[str]) -> str:
    """What a built library depends on besides its sources (in cache_dir's name): the exact torch build and flags."""
    return f"{torch.__version__} {torch.version.git_version} {' '.join(flags)}\n"


def _load_built(build: Path, flags: list[str]):
    """The library a previous build left, imported directly when its stamp matches; else None (build).

    torch's `load` re-runs ninja on every import, and ninja rebuilds whenever the command line changed: a second venv
    with the same torch (its headers at another path) rebuilt the same sources, ~45 s, and the first venv rebuilt
    them again after it. A library built against the same torch build is the same library."""
    library = build / f"{NAME}.so"
    stamp = build / STAMP
    if not (library.exists() and stamp.exists() and stamp.read_text() == _stamp(flags)):
        return None
    spec = importlib.util.spec_from_file_location(NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_error() -> str | None:
    return _error


@contextmanager
def _build_guard(build: Path):
    """One llmbin process at a time builds or loads into `build`, under a kernel lock that dies with its holder.

    torch's own lock is a file that a killed build leaves behind, and every later process then waits on it forever.
    Holding this lock, nobody else is building: a torch lock file still there is such a leftover, and goes."""
    with open(build / "llmbin-build.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        stale = build / "lock"
        if stale.exists():
            print(f"llmbin: removing {stale}, left by a build that was killed; building again", file=sys.stderr,
                  flush=True)
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _register_fakes() -> None:
    """Shapes of the extension's ops for torch.compile (the ops are defined by the extension, so after it loads)."""

    @torch.library.register_fake("llmbin_cpu::lut_matmul")
    def _(x, key, n, isa):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("llmbin_cpu::lut_matmul_many")
    def _(x, key0, n0, key1, n1, key2, n2, isa):
        return x.new_empty((*x.shape[:-1], n0 + n1 + (n2 if key2 >= 0 else 0)))

    @torch.library.register_fake("llmbin_cpu::decode_attention")
    def _(q, k, v, mask, scale):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    @torch.library.register_fake("llmbin_cpu::prefill_attention")
    def _(q, k, v, scale):
        return q.new_empty((q.shape[0], q.shape[2], q.shape[1], q.shape[3]))

    @torch.library.register_fake("llmbin_cpu::rms_norm")
    def _(x, weight, eps):
        return torch.empty_like(x)

    @torch.library.register_fake("llmbin_cpu::silu_mul")
    def _(gate, up):
        return torch.empty_like(gate)

    @torch.library.register_fake("llmbin_cpu::rotary_qk")
    def _(q, k, cos, sin, head_dim):
        return torch.empty_like(q), torch.empty_like(k)

    @torch.library.register_fake("llmbin_cpu::decode_attention_isa")
    def _(q, k, v, mask, scale, isa):
        return torch.empty_like(q, memory_format=torch.contiguous_format)
