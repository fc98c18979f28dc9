"""Triton backend (CUDA GPUs) for the bit-plane format.

The layer is split into segments by llmbin/kernels/cpu/layout.py (binarized planes; the 4-bit
salient block as 4 more planes); x is gathered once in torch (perm, in_scale, group padding), each
segment runs through the custom op `llmbin::bitplane_gemm` (GEMV kernel for M <= 4, tl.dot GEMM
above, and for large M on a GPU the faster of the fused GEMM and dequantize-to-workspace + cuBLAS,
measured once per shape), and the PB-LLM sparse correction is a torch CSR matmul.
On a machine without CUDA the kernels still run on CPU tensors under TRITON_INTERPRET=1 (tests
call `prepare_state`/`triton_matmul` directly); the selector only offers this backend for CUDA.
Importing this module raises ImportError when triton is missing.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

import triton  # noqa: F401  (ImportError here means: no triton backend)

from .. import register_backend
from ..cpu.layout import layer_layout
from . import kernels as K

GEMV_MAX_M = 4
LARGE_M = 512
POISON = False  # tests: outputs not zeroed for atomics start as NaN
_large_m_choice: dict = {}


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: a small split still exercises the atomic path


def _split(n_programs: int, n_tiles: int, device: torch.device) -> tuple[int, int]:
    """Split K so that rows x splits cover the GPU ~4 times; returns (splits, tiles per split)."""
    want = max(1, min(n_tiles, -(-4 * _num_sms(device) // max(1, n_programs))))
    per = -(-n_tiles // want)
    return -(-n_tiles // per), per


def _out(m: int, n: int, device, accumulate: bool) -> torch.Tensor:
    """Output buffer: zeros for split-K atomics, else uninitialized (NaN when POISON, for tests)."""
    if accumulate:
        return torch.zeros((m, n), dtype=torch.float32, device=device)
    return torch.full((m, n), float("nan"), device=device) if POISON else torch.empty((m, n), device=device)


def _gemv(x, words, scales, offsets, wpg, tf32):
    m, (p, n, kw) = x.shape[0], words.shape
    bw, block_n = 4, 32
    splits, per = _split(triton.cdiv(n, block_n), triton.cdiv(kw, bw), x.device)
    y = _out(m, n, x.device, splits > 1)
    K.bitplane_gemv_kernel[(triton.cdiv(n, block_n), splits)](
        x, words, scales, offsets if offsets is not None else scales, y, m, n, kw, wpg, x.stride(0), per,
        P=p, HAS_OFFSETS=offsets is not None, BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_W=bw,
        USE_ATOMIC=splits > 1, num_warps=4)
    return y


def _gemm(x, words, scales, offsets, wpg, tf32):
    m, (p, n, kw) = x.shape[0], words.shape
    # IEEE fp32 dots are FMA loops: smaller tiles keep them within registers (see aot.py)
    bw, block_m, block_n = 1, 16 if m <= 16 else 32 if m <= 32 else 64, 64
    if x.dtype == torch.float32 and not tf32:
        block_m, block_n = 16, 32
    grid_mn = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    splits, per = _split(grid_mn, triton.cdiv(kw, bw), x.device)
    y = _out(m, n, x.device, splits > 1)
    K.bitplane_gemm_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n), splits)](
        x, words, scales, offsets if offsets is not None else scales, y, m, n, kw, wpg, x.stride(0), per,
        P=p, HAS_OFFSETS=offsets is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_W=bw, USE_ATOMIC=splits > 1,
        PRECISION="tf32" if tf32 else "ieee", num_warps=4)
    return y


def dequantize_segment(words, scales, offsets, wpg, dtype) -> torch.Tensor:
    """Dense W^T [KW*32, N] of one segment, decoded by the same tile code as the GEMM."""
    p, n, kw = words.shape
    bw, block_n = 1, 64
    out = torch.empty((kw * 32, n), dtype=dtype, device=words.device)
    if POISON:
        out.fill_(float("nan"))
    K.bitplane_dequant_kernel[(triton.cdiv(n, block_n), triton.cdiv(kw, bw))](
        words, scales, offsets if offsets is not None else scales, out, n, kw, wpg, P=p,
        HAS_OFFSETS=offsets is not None, BLOCK_N=block_n, BLOCK_W=bw, num_warps=4)
    return out


def _dequant_matmul(x, words, scales, offsets, wpg, tf32):
    return (x @ dequantize_segment(words, scales, offsets, wpg, x.dtype)).float()


def _time(fn, reps=3) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


@torch.library.custom_op("llmbin::bitplane_gemm", mutates_args=())
def bitplane_gemm(x: torch.Tensor, words: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                  wpg: int, tf32: bool = False) -> torch.Tensor:
    """y [M, N] float32 = x [M, KW*32] (gathered) times one bit-plane segment.

    fp16 x runs the GEMM on fp16 tensor cores; fp32 x runs it in IEEE fp32, or in TF32 when
    `tf32` (used for bf16 activations, whose values TF32 holds exactly: finer than bf16 operands).
    """
    args = (x, words, scales, offsets, wpg, tf32)
    if x.shape[0] <= GEMV_MAX_M:
        return _gemv(*args)
    if x.shape[0] < LARGE_M or x.device.type != "cuda":
        return _gemm(*args)
    key = (tuple(words.shape), wpg, x.dtype, tf32, 1 << (x.shape[0].bit_length() - 1), x.device)
    if key not in _large_m_choice:  # measured once per shape and power-of-two M bucket
        _large_m_choice[key] = min((_gemm, _dequant_matmul), key=lambda f: _time(lambda: f(*args)))
    return _large_m_choice[key](*args)


@bitplane_gemm.register_fake
def _(x, words, scales, offsets, wpg, tf32=False):
    return x.new_empty((x.shape[0], words.shape[1]), dtype=torch.float32)


@dataclass
class TritonState:
    segments: list  # (words, scales, offsets, wpg, start, stop) on the device; x slots [start, stop)
    src: torch.Tensor | None  # gather index into [x, 0] (K = the zero column), None when x is used as is
    gscale: torch.Tensor | None  # float32 multiplier per slot, None when all ones
    sparse: torch.Tensor | None  # float32 CSR [N, K]
    n: int


def prepare_state(module, device: torch.device | None = None) -> TritonState:
    device = device or next(module.buffers()).device
    lay = layer_layout(module.meta, dict(module.named_buffers(recurse=False)))
    segs, start = [], 0
    for s in lay.segments:
        stop = start + s.words.shape[-1] * 32
        segs.append((s.words.to(device), s.scales.to(device), None if s.offsets is None else s.offsets.to(device),
                     s.wpg, start, stop))
        start = stop
    k = lay.in_features
    src = None if lay.identity else torch.where(lay.src >= 0, lay.src, k).to(device)
    gscale = None if bool((lay.gscale[lay.src >= 0] == 1).all()) else lay.gscale.to(device)
    sparse = None
    if lay.sparse is not None:
        values, cols, rowptr = lay.sparse
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            sparse = torch.sparse_csr_tensor(rowptr.long(), cols.long(), values.float(), (lay.out_features, k),
                                             check_invariants=False).to(device)
    return TritonState(segs, src, gscale, sparse, lay.out_features)


def triton_matmul(state: TritonState, x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> y [..., N] in x.dtype (bias excluded)."""
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    # fp16 stays fp16 for the tensor-core GEMM; everything else is gathered and scaled in fp32
    xdt = torch.float16 if x.dtype == torch.float16 and x2.shape[0] > GEMV_MAX_M else torch.float32
    xg = x2.to(xdt).contiguous()
    if state.src is not None:
        xg = torch.cat([xg, xg.new_zeros(xg.shape[0], 1)], dim=1).index_select(1, state.src)
        if state.gscale is not None:
            xg = xg * state.gscale.to(xdt)
    y = None
    for words, scales, offsets, wpg, start, stop in state.segments:
        part = bitplane_gemm(xg[:, start:stop], words, scales, offsets, wpg, x.dtype == torch.bfloat16)
        y = part if y is None else y + part
    if state.sparse is not None:
        y = y + (state.sparse @ x2.float().T).T
    return y.to(x.dtype).reshape(*lead, state.n)


class TritonBackend:
    name = "triton"
    priority = 20
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def supports(self, meta: dict, device: torch.device, dtype: torch.dtype) -> str | None:
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            return "needs a CUDA device"
        if meta.get("format") != "bitplane":
            return f"handles the bitplane format only, not {meta.get('format')}"
        if dtype not in self.dtypes:
            return f"activations must be float32/float16/bfloat16, not {dtype}"
        if not 1 <= meta["num_planes"] <= 4:
            return f"handles 1 to 4 planes, not {meta['num_planes']}"
        return None

    def prepare(self, module) -> TritonState:
        return prepare_state(module)

    def forward(self, module, state: TritonState, x: torch.Tensor) -> torch.Tensor:
        return triton_matmul(state, x)


register_backend(TritonBackend())
