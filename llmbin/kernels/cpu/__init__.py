"""Native CPU backend: a lookup-table GEMV over bit planes (lut.cpp), built on first use.

prepare() repacks the semantic layout into the kernel's layout:
- every segment's planes padded so each group starts on a 32-bit word, then rows interleaved
  16 at a time: words [NB, KW, P, 16] int32 (NB = ceil(N / 16), KW = groups * words per group);
- scales [NB, groups, P, 16] and offsets [NB, groups, 16] in float32 with out_scale folded in;
- the PTQ1.61 4-bit salient block as a second segment of 4 planes (scale s*2^b, offset -z*s);
- one gather index + multiplier over x that applies perm, in_scale and the zero padding.
The C++ extension compiles with torch.utils.cpp_extension on the first forward (cached under
$LLMBIN_CACHE/torch_extensions, default ~/.cache/llmbin/torch_extensions). If it cannot be built,
supports() reports why, a one-time warning says so, and the selector falls back to `torch`.
`LLMBIN_CPU_ISA=scalar|avx2|avx512` forces a code path (default: the best this CPU has).
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import register_backend
from ...formats.bits import pack_codes, unpack_codes, unpack_nibbles

ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}
ROWS = 16  # rows per interleaved block = entries per lookup table

_ext = None
_error: str | None = None
_lock = threading.Lock()


def cache_dir() -> Path:
    root = Path(os.environ.get("LLMBIN_CACHE", Path.home() / ".cache" / "llmbin"))
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}"
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
                _ext = load(name="llmbin_cpu_lut", sources=[str(Path(__file__).with_name("lut.cpp"))],
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


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _interleave(t: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """[P, N, X] -> [NB, X, P, 16]: rows padded to blocks of 16, block-major, rows innermost."""
    p, n, x = t.shape
    t = F.pad(t, (0, 0, 0, n_blocks * ROWS - n))
    return t.view(p, n_blocks, ROWS, x).permute(1, 3, 0, 2).contiguous()


def group_words(planes: torch.Tensor, k: int, g: int) -> tuple[torch.Tensor, int, int]:
    """Packed planes [P, N, ceil(k/32)] -> [P, N, ng * wpg] with group j in words [j*wpg, (j+1)*wpg)."""
    g = min(g, k)
    ng, wpg = _ceil(k, g), _ceil(g, 32)
    if ng == 1 or g % 32 == 0:  # groups already start on words: only pad the last one
        return F.pad(planes[..., : ng * wpg], (0, ng * wpg - min(planes.shape[-1], ng * wpg))), ng, wpg
    bits = F.pad(unpack_codes(planes, 1, k), (0, ng * g - k)).unflatten(-1, (ng, g))
    return pack_codes(F.pad(bits, (0, wpg * 32 - g)), 1).flatten(-2), ng, wpg


def group_positions(k: int, g: int) -> torch.Tensor:
    """For each padded slot ng*wpg*32, its position in the segment's channel order, or -1 for padding."""
    g = min(g, k)
    ng, wpg = _ceil(k, g), _ceil(g, 32)
    j = torch.arange(wpg * 32)
    pos = torch.arange(ng)[:, None] * g + j[None, :]
    return torch.where((j[None, :] < g) & (pos < k), pos, -1).flatten()


@dataclass
class CpuState:
    plan: object  # the extension's Plan: repacked tensors + forward(x, isa)
    isa: int


def prepare_state(module, isa: str | None = None) -> CpuState:
    meta = module.meta
    n, k, k_sal = meta["out_features"], meta["in_features"], meta["k_salient"]
    k_bin, nb = k - k_sal, _ceil(meta["out_features"], ROWS)
    buf = {name: b.detach().cpu() for name, b in module.named_buffers(recurse=False)}
    perm = buf["perm"].long() if meta["perm"] else torch.arange(k)
    out_scale = buf["out_scale"].float() if meta["out_scale"] else torch.ones(n)
    in_scale = buf["in_scale"].float() if meta["in_scale"] else torch.ones(k)
    words, ng, wpg = group_words(buf["planes"], k_bin, meta["group_size"])
    seg_words, seg_scales, seg_offsets = [_interleave(words, nb)], [], []
    seg_scales.append(_interleave(buf["scales"].float()[:, :, :ng] * out_scale[None, :, None], nb))
    off = buf["offsets"].float() * out_scale[:, None] if meta["offsets"] else None
    seg_offsets.append(torch.empty(0) if off is None else _interleave(off[None], nb)[:, :, 0])
    pos = group_positions(k_bin, meta["group_size"])
    src = torch.where(pos >= 0, perm[pos.clamp(min=0)], -1)
    gscale = torch.where(pos >= 0, in_scale[src.clamp(min=0)], 0.0)
    shape = [ng, wpg]
    if k_sal:  # codes q in 0..15 as 4 planes: s * sum_b 2^b M_b(x) - z * s * S(x) = sum (q - z) s x
        codes = unpack_nibbles(buf["salient_q"], k_sal).long()
        planes = pack_codes((codes[None] >> torch.arange(4)[:, None, None]) & 1, 1)
        s, z = buf["salient_scale"].float(), buf["salient_zero"].float()
        seg_words.append(_interleave(planes, nb))
        seg_scales.append(_interleave((s[None, :] * (2.0 ** torch.arange(4))[:, None])[..., None], nb))
        seg_offsets.append(_interleave((-z * s)[None, :, None], nb)[:, :, 0])
        spos = group_positions(k_sal, k_sal)
        ssrc = torch.where(spos >= 0, perm[k_bin + spos.clamp(min=0)], -1)
        src, gscale = torch.cat([src, ssrc]), torch.cat([gscale, (ssrc >= 0).float()])
        shape += [1, _ceil(k_sal, 32)]
    sparse = (torch.empty(0, dtype=torch.float16), torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.int32))
    if meta["sparse_nnz"] is not None:
        sparse = (buf["sparse_values"].half().contiguous(), buf["sparse_colidx"].contiguous(),
                  buf["sparse_rowptr"].int().contiguous())
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"llmbin cpu backend unavailable: {_error}")
    isa = isa or os.environ.get("LLMBIN_CPU_ISA", "auto")
    if isa not in ISAS:
        raise ValueError(f"LLMBIN_CPU_ISA={isa} is not one of {', '.join(ISAS)}")
    plan = ext.Plan(src.int().contiguous(), gscale.float().contiguous(), seg_words, seg_scales, seg_offsets, shape,
                    *sparse, n, k)
    return CpuState(plan, ISAS[isa])


def lut_matmul(state: CpuState, x: torch.Tensor, isa: str | None = None) -> torch.Tensor:
    """x [..., K] (fp32/fp16/bf16) -> y [..., N] in x.dtype, bias excluded."""
    return state.plan.forward(x, ISAS[isa] if isa else state.isa)


class CpuBackend:
    name = "cpu"
    priority = 10
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def supports(self, meta: dict, device: torch.device, dtype: torch.dtype) -> str | None:
        if torch.device(device).type != "cpu":
            return "runs on CPU tensors only"
        if meta.get("format") != "bitplane":
            return f"handles the bitplane format only, not {meta.get('format')}"
        if dtype not in self.dtypes:
            return f"activations must be float32/float16/bfloat16, not {dtype}"
        if not 1 <= meta["num_planes"] <= 4:
            return f"handles 1 to 4 planes, not {meta['num_planes']}"
        if load_extension() is None:
            return _error
        return None

    def prepare(self, module) -> CpuState:
        return prepare_state(module)

    def forward(self, module, state: CpuState, x: torch.Tensor) -> torch.Tensor:
        return state.plan.forward(x, state.isa)


register_backend(CpuBackend())
