"""Native CPU backend: a lookup-table GEMV over bit planes (lut.cpp), built on first use.

prepare() takes the segments of layout.py (binarized planes, and the 4-bit salient block as 4
more planes; groups padded to whole words; one gather index applying perm/in_scale/padding; a `uniform`
integer layer as one plane per code bit, uniform_layout) and interleaves rows 16 at a time for the
kernel: words [NB, KW, P, 16] int32 (NB = ceil(N / 16)),
scales [NB, groups, P, 16] and offsets [NB, groups, 16] float32, out_scale folded in.
The C++ extension compiles with torch.utils.cpp_extension on the first forward (cached under
$LLMBIN_CACHE/torch_extensions, default ~/.cache/llmbin/torch_extensions). If it cannot be built,
supports() reports why, a one-time warning says so, and the selector falls back to `torch`.
`LLMBIN_CPU_ISA=scalar|avx2|avx512` forces a code path (default: the best this CPU has).
Under torch.compile the kernel is the C++ op `llmbin_cpu::lut_matmul(x, key, n, isa)` (a plan is not
a tensor, so the op takes the key under which the extension registered it) with a fake (shape-only)
implementation, so the graph does not break; eager calls go to the plan directly. A Python
torch.library.custom_op would cost ~17 us of dispatch per call: 3.6 ms per token on SmolLM2.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import register_backend
from .layout import layer_layout, uniform_layout

SOURCES = [Path(__file__).with_name(name) for name in ("lut.cpp", "decode_attention.cpp")]
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}
ROWS = 16  # rows per interleaved block = entries per lookup table

_ext = None
_error: str | None = None
_lock = threading.Lock()


def cache_dir() -> Path:
    """One build per torch, python and kernel source: checkouts with different lut.cpp never rebuild each other's."""
    root = Path(os.environ.get("LLMBIN_CACHE", Path.home() / ".cache" / "llmbin"))
    source = hashlib.sha1(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:10]
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}-{source}"
    return root / "torch_extensions" / f"cpu_lut-{tag}"


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
                if not any(build.glob("*.so")):
                    print(f"llmbin: compiling the native CPU kernel into {build} (once, about a minute)",
                          file=sys.stderr, flush=True)
                _ext = load(name="llmbin_cpu_lut", sources=[str(p) for p in SOURCES],
                            extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                            build_directory=str(build), verbose=bool(os.environ.get("LLMBIN_VERBOSE_BUILD")))
            except Exception as exc:  # noqa: BLE001 - any build failure means: fall back, loudly
                lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
                _error = f"the C++ kernel could not be built ({type(exc).__name__}: {lines[-1] if lines else ''})"
                warnings.warn(f"llmbin: {_error}; bit-plane layers on CPU run on the slower torch backend instead",
                              RuntimeWarning, stacklevel=3)
    return _ext


def build_error() -> str | None:
    return _error


@contextmanager
def gemv_threads(n: int | None):
    """One-token matmuls (decode steps) split over n threads inside the block: the caller and n - 1 helper
    threads that spin between calls (lut.cpp's SpinPool; they block ~5 ms after the last one). None or 1, or no
    kernel: unchanged. Many-token matmuls (prefill) use torch's OpenMP threads as always."""
    ext = load_extension() if n and n > 1 else None
    if ext is None:
        yield
        return
    before = ext.gemv_threads()
    ext.set_gemv_threads(n)
    try:
        yield
    finally:
        ext.set_gemv_threads(before)


def _interleave(t: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """[P, N, X] -> [NB, X, P, 16]: rows padded to blocks of 16, block-major, rows innermost."""
    p, n, x = t.shape
    t = F.pad(t, (0, 0, 0, n_blocks * ROWS - n))
    return t.view(p, n_blocks, ROWS, x).permute(1, 3, 0, 2).contiguous()


@dataclass
class CpuState:
    plan: object  # the extension's Plan: repacked tensors + forward(x, isa)
    isa: int
    out_features: int
    key: int  # the plan's key in the extension's registry (what the compiled op takes)


def _register_fake() -> None:
    """Shapes for torch.compile: the op is defined by the extension (lut.cpp), so this runs after it loads."""
    if getattr(_register_fake, "done", False):
        return

    @torch.library.register_fake("llmbin_cpu::lut_matmul")
    def _(x, key, n, isa):
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("llmbin_cpu::decode_attention")
    def _(q, k, v, mask, scale):
        return torch.empty_like(q, memory_format=torch.contiguous_format)

    _register_fake.done = True


def decode_attention_op():
    """The extension's one-token attention op (decode_attention.cpp), or None when the kernel cannot be built."""
    if load_extension() is None:
        return None
    _register_fake()
    return torch.ops.llmbin_cpu.decode_attention


def prepare_state(module, isa: str | None = None) -> CpuState:
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"llmbin cpu backend unavailable: {_error}")
    isa = isa or os.environ.get("LLMBIN_CPU_ISA", "auto")
    if isa not in ISAS:
        raise ValueError(f"LLMBIN_CPU_ISA={isa} is not one of {', '.join(ISAS)}")
    layout = uniform_layout if module.meta["format"] == "uniform" else layer_layout
    lay = layout(module.meta, {n: b for n, b in module.named_buffers(recurse=False) if not n.startswith("_")})
    nb = -(-lay.out_features // ROWS)
    segs = lay.segments
    offsets = [torch.empty(0) if s.offsets is None else _interleave(s.offsets[None], nb)[:, :, 0] for s in segs]
    sparse = lay.sparse or (torch.empty(0, dtype=torch.float16), torch.empty(0, dtype=torch.int32),
                            torch.empty(0, dtype=torch.int32))
    plan = ext.Plan(lay.src.int(), lay.gscale, [_interleave(s.words, nb) for s in segs],
                    [_interleave(s.scales, nb) for s in segs], offsets, [v for s in segs for v in (s.ng, s.wpg)],
                    *sparse, lay.out_features, lay.in_features)
    _register_fake()
    return CpuState(plan, ISAS[isa], lay.out_features, plan.key)


def lut_matmul(state: CpuState, x: torch.Tensor, isa: str | None = None, poison: bool = False) -> torch.Tensor:
    """x [..., K] (fp32/fp16/bf16) -> y [..., N] in x.dtype, bias excluded. `poison` NaN-fills buffers first."""
    return state.plan.forward(x, ISAS[isa] if isa else state.isa, poison)


class CpuBackend:
    name = "cpu"
    priority = 10
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def supports(self, meta: dict, device: torch.device, dtype: torch.dtype) -> str | None:
        if torch.device(device).type != "cpu":
            return "runs on CPU tensors only"
        if meta.get("format") not in ("bitplane", "uniform"):
            return f"handles the bitplane and uniform formats only, not {meta.get('format')}"
        if dtype not in self.dtypes:
            return f"activations must be float32/float16/bfloat16, not {dtype}"
        if meta["format"] == "uniform" and not meta.get("lut"):
            # decoder GPTQ/RTN layers keep the reference backend: their packed logits then equal the fake-quant
            # model's exactly; the vocabulary-sized embedding/head, read whole every decoded token, opt in
            return "runs uniform layers only where they opt in (meta 'lut': packed embeddings and heads)"
        if meta["format"] == "uniform" and not 1 <= meta["bits"] <= 8:
            return f"handles 1 to 8 bit integer codes, not {meta['bits']} bits"
        if meta["format"] == "bitplane" and not 1 <= meta["num_planes"] <= 4:
            return f"handles 1 to 4 planes, not {meta['num_planes']}"
        if load_extension() is None:
            return _error
        return None

    def prepare(self, module) -> CpuState:
        return prepare_state(module)

    def forward(self, module, state: CpuState, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.ops.llmbin_cpu.lut_matmul(x, state.key, state.out_features, state.isa)
        return state.plan.forward(x, state.isa)


register_backend(CpuBackend())
