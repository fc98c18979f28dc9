"""The CPU backend: a lookup-table GEMV/GEMM over bit planes (lut_kernels.h), driven by the extension's Plan.

`uniform` (GPTQ/RTN, packed embeddings and heads) layers with groups of whole 32-column blocks run on the
integer-code kernel instead (uniform_kernels.h: int16 activations x codes, AVX512-VNNI or AVX2; layout.uniform_codes).
Otherwise prepare() takes the segments of layout.py (binarized planes, and the 4-bit salient block as 4 more planes; groups
padded to whole words; one gather index applying perm/in_scale/padding; a `uniform` integer layer as one plane
per code bit) and interleaves rows 16 at a time for the kernel: words [NB, KW, P, 16] int32 (NB = ceil(N / 16)),
scales [NB, groups, P, 16] and offsets [NB, groups, 16] float32, out_scale folded in.
`LLMBIN_CPU_ISA=scalar|avx2|avx512|gemm|sgemm` forces a code path (default: the best this CPU has). From
`LLMBIN_CPU_GEMM_MIN_TOKENS` tokens on (default 16; 0 = never), a product runs as a per-call bf16 dequantization
of the layer + oneDNN's brgemm instead (dequant_gemm.h; CPUs with AVX512-BF16; elsewhere a float32 dequantization
+ sgemm), which says once that it does.
Under torch.compile the product is the op `llmbin_cpu::lut_matmul` (kernels/ops.py); eager calls go to the plan
directly: a Python custom op would cost ~17 us of dispatch per call, 3.6 ms per token on SmolLM2.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .build import build_error, load_extension
from .layout import layer_layout, uniform_codes, uniform_layout

# gemm, igemm, sgemm: the many-token paths (dequant_gemm.h: bf16 brgemm where torch offers it; int_gemm.h: the
# integer GEMM on AVX512-VNNI CPUs without it; else float32 sgemm)
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "gemm": 4, "sgemm": 5, "igemm": 6, "igemm8": 7}
ROWS = 16  # rows per interleaved block = entries per lookup table


@contextmanager
def gemv_threads(n: int | None):
    """One-token matmuls (decode steps) split over n threads inside the block: the caller and n - 1 helper
    threads that spin between calls (spin_pool.h; they block ~5 ms after the last one). None or 1, or no
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


_paths_said = False


def exact_only() -> bool:
    """LLMBIN_CPU_EXACT=1: only the float32 paths, as before the faster ones: many-token products stay on the
    lookup tables, decoder GPTQ/RTN layers on the torch reference (their packed logits then equal the fake-quant
    model's exactly). The test suite runs so; the faster paths are held to their own stated bounds."""
    return os.environ.get("LLMBIN_CPU_EXACT", "").strip() == "1"


def many_token_paths(ext) -> str:
    """Which kernel runs a product of how many tokens here, and why (said once per process by prepare_state)."""
    table = f"the lookup-table kernel ({ {1: 'scalar', 2: 'avx2', 3: 'avx512'}[ext.best_isa()] })"
    if ext.uniform_supported():
        table += (f" (integer-code layers: the {ext.uniform_isa().upper()} integer kernel, int16 activations, "
                  "|error| <= max|x| / 65534 each)")
    if exact_only():
        return "packed CPU products run on the float32 paths only (LLMBIN_CPU_EXACT=1)"
    if ext.gemm_min_tokens() > 1 << 40:
        return f"packed CPU products run on {table} for every batch size (LLMBIN_CPU_GEMM_MIN_TOKENS=0)"
    if not ext.gemm_supported() and ext.uniform_isa() == "avx512-vnni":
        return (f"packed CPU products of 1-{ext.gemm_min_tokens() - 1} tokens run on {table}, of "
                f"{ext.gemm_min_tokens()}+ tokens as the AVX512-VNNI integer GEMM (torch offers no bf16 brgemm on "
                "this CPU, seen only with AMX; " + _activation_rounding(ext) +
                "; LLMBIN_CPU_GEMM_MIN_TOKENS=0 keeps the table kernel)")
    if not ext.gemm_supported():
        return (f"packed CPU products of 1-{ext.gemm_min_tokens() - 1} tokens run on {table}, of "
                f"{ext.gemm_min_tokens()}+ tokens as a per-call float32 dequantization + sgemm (torch offers no bf16 "
                "brgemm on this CPU, seen only with AMX; the reference's values summed in another order; "
                "LLMBIN_CPU_GEMM_MIN_TOKENS=0 keeps the table kernel)")
    return (f"packed CPU products of 1-{ext.gemm_min_tokens() - 1} tokens run on {table}, of {ext.gemm_min_tokens()}+ "
            "tokens as a per-call bf16 dequantization + oneDNN brgemm (bf16 weights and activations, float32 sums: "
            "|error| <= 2^-8 sum|x||w|; LLMBIN_CPU_GEMM_MIN_TOKENS=0 keeps the table kernel)")


ROUNDINGS = {"0": "int16", "1": "int8", "binarized": "binarized"}  # LLMBIN_CPU_GEMM_INT8 -> the GEMM's rounding


def _activation_rounding(ext) -> str:
    span = f"per span of {32 * ext.gemm_span()} slots (LLMBIN_CPU_GEMM_SPAN={ext.gemm_span()} blocks of 32)"
    if ext.int_gemm_rounding() == "int8":
        return f"int8 activations {span}, |error| <= max|x| / 254 each (LLMBIN_CPU_GEMM_INT8=1)"
    int16 = f"int16 activations {span}, |error| <= max|x| / 65534 each"
    if ext.int_gemm_rounding() == "binarized":
        return (f"{int16}, int8 (max|x| / 254) on a PTQ1.61 layer's binarized channels, whose outliers its salient "
                "block holds; LLMBIN_CPU_GEMM_INT8=0: int16 throughout, 1: int8 throughout")
    return f"{int16}; LLMBIN_CPU_GEMM_INT8=binarized: int8 on PTQ1.61's binarized channels, 1: int8 throughout"


def _configure(ext) -> None:
    global _paths_said
    if _paths_said:
        return
    raw = os.environ.get("LLMBIN_CPU_GEMM_MIN_TOKENS", "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(f"LLMBIN_CPU_GEMM_MIN_TOKENS={raw} is not a whole number of tokens (0 = never)")
        ext.set_gemm_min_tokens(int(raw) or 1 << 62)
    elif exact_only():
        ext.set_gemm_min_tokens(1 << 62)
    int8 = os.environ.get("LLMBIN_CPU_GEMM_INT8", "").strip()
    if int8 and int8 not in ROUNDINGS:
        raise ValueError(f"LLMBIN_CPU_GEMM_INT8={int8}: binarized (the default: int8 activations in the integer GEMM "
                         "on PTQ1.61's binarized channels, int16 on its salient ones), 1 (int8 throughout) or 0 (int16)")
    if int8:
        ext.set_int_gemm_rounding(ROUNDINGS[int8])
    span = os.environ.get("LLMBIN_CPU_GEMM_SPAN", "").strip()
    if span:
        if not (span.isdigit() and 1 <= int(span) <= ext.GEMM_MAX_SPAN):
            raise ValueError(f"LLMBIN_CPU_GEMM_SPAN={span}: blocks of 32 slots that share one activation scale in the "
                             f"integer GEMM, 1 to {ext.GEMM_MAX_SPAN} (default 4; 1: a scale per block)")
        ext.set_gemm_span(int(span))
    _paths_said = True
    print(f"llmbin: {many_token_paths(ext)}", file=sys.stderr, flush=True)


def prepare_state(module, isa: str | None = None, bitplanes: bool = False) -> CpuState:
    """bitplanes: a `uniform` layer as bit planes for the lookup tables even where the integer-code kernel runs."""
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"llmbin cpu backend unavailable: {build_error()}")
    _configure(ext)
    isa = isa or os.environ.get("LLMBIN_CPU_ISA", "auto")
    if isa not in ISAS:
        raise ValueError(f"LLMBIN_CPU_ISA={isa} is not one of {', '.join(ISAS)}")
    buffers = {n: b for n, b in module.named_buffers(recurse=False) if not n.startswith("_")}
    meta = module.meta
    whole_blocks = meta.get("group_size", 0) % 32 == 0 or meta.get("group_size", 0) >= meta["in_features"]
    if (meta["format"] == "uniform" and not bitplanes and not exact_only()
            and ext.uniform_supported() and whole_blocks):
        codes, scales, zeros, bits = uniform_codes(meta, buffers)
        plan = ext.UniformPlan(codes, scales, zeros, meta["out_features"], meta["in_features"],
                               min(meta["group_size"], meta["in_features"]), bits)
        return CpuState(plan, ISAS[isa], meta["out_features"], plan.key)
    layout = uniform_layout if meta["format"] == "uniform" else layer_layout
    lay = layout(meta, buffers)
    nb = -(-lay.out_features // ROWS)
    segs = lay.segments
    offsets = [torch.empty(0) if s.offsets is None else _interleave(s.offsets[None], nb)[:, :, 0] for s in segs]
    sparse = lay.sparse or (torch.empty(0, dtype=torch.float16), torch.empty(0, dtype=torch.int32),
                            torch.empty(0, dtype=torch.int32))
    plan = ext.Plan(lay.src.int(), lay.gscale, [_interleave(s.words, nb) for s in segs],
                    [_interleave(s.scales, nb) for s in segs], offsets, [v for s in segs for v in (s.ng, s.wpg)],
                    *sparse, lay.out_features, lay.in_features, lay.salient_last)
    return CpuState(plan, ISAS[isa], lay.out_features, plan.key)


def lut_matmul(state: CpuState, x: torch.Tensor, isa: str | None = None, poison: bool = False) -> torch.Tensor:
    """x [..., K] (fp32/fp16/bf16) -> y [..., N] in x.dtype, bias excluded. `poison` NaN-fills buffers first."""
    return state.plan.forward(x, ISAS[isa] if isa else state.isa, poison)


class CpuBackend:
    name = "cpu"
    priority = 10
    owns_weights = True  # forward reads its plan only, never the module's buffers
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def supports(self, meta: dict, device: torch.device, dtype: torch.dtype) -> str | None:
        if torch.device(device).type != "cpu":
            return "runs on CPU tensors only"
        if meta.get("format") not in ("bitplane", "uniform"):
            return f"handles the bitplane and uniform formats only, not {meta.get('format')}"
        if dtype not in self.dtypes:
            return f"activations must be float32/float16/bfloat16, not {dtype}"
        if meta["format"] == "uniform" and not meta.get("lut") and exact_only():
            return "LLMBIN_CPU_EXACT=1 keeps decoder GPTQ/RTN layers on the float32 reference"
        if meta["format"] == "uniform" and not 1 <= meta["bits"] <= 8:
            return f"handles 1 to 8 bit integer codes, not {meta['bits']} bits"
        if meta["format"] == "bitplane" and not 1 <= meta["num_planes"] <= 4:
            return f"handles 1 to 4 planes, not {meta['num_planes']}"
        if load_extension() is None:
            return build_error()
        return None

    def prepare(self, module) -> CpuState:
        return prepare_state(module)

    def forward(self, module, state: CpuState, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return torch.ops.llmbin_cpu.lut_matmul(x, state.key, state.out_features, state.isa)  # kernels/ops.py
        return state.plan.forward(x, state.isa)
