"""Triton kernels over one bit-plane segment (see llmbin/kernels/cpu/layout.py).

Inputs shared by all kernels: x [M, KW*32] gathered activations (unit stride along K), words int32
[P, N, KW] (bit j of word w is channel 32w + j), scales fp32 [P, N, ng] and optional offsets fp32
[N, ng], group j on words [j*wpg, (j+1)*wpg). A K tile is BLOCK_W words; groups may change between
words but never inside one, so the GEMV needs one scale multiply per word and plane, none per
weight. Plain @triton.jit (no autotune) so the CPU interpreter can run them.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bitplane_gemv_kernel(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, M, N, KW, wpg, stride_xm, tiles_per_split,
                         P: tl.constexpr, HAS_OFFSETS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_W: tl.constexpr, USE_ATOMIC: tl.constexpr):
    """Small M: rows x split-K programs; per-word masked sums with tl.where, per-word sums of x."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rw = tl.arange(0, BLOCK_W)
    rb = tl.arange(0, 32)
    n_mask = rn < N
    ng = KW // wpg
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t_end = tl.minimum((pid_k + 1) * tiles_per_split, tl.cdiv(KW, BLOCK_W))
    for t in range(pid_k * tiles_per_split, t_end):
        w = t * BLOCK_W + rw
        w_mask = w < KW
        g = w // wpg
        wn_mask = n_mask[:, None] & w_mask[None, :]
        for p in tl.static_range(P):
            wv = tl.load(w_ptr + p * N * KW + rn[:, None] * KW + w[None, :], mask=wn_mask, other=0)
            bits = ((wv[:, :, None] >> rb[None, None, :]) & 1) != 0  # [BLOCK_N, BLOCK_W, 32]
            a = tl.load(s_ptr + p * N * ng + rn[:, None] * ng + g[None, :], mask=wn_mask, other=0.0)
            for m in tl.static_range(BLOCK_M):
                xm = tl.load(x_ptr + m * stride_xm + w[:, None] * 32 + rb[None, :],
                             mask=w_mask[:, None] & (rb[None, :] + m * 32 < M * 32), other=0.0).to(tl.float32)
                masked = tl.sum(tl.where(bits, xm[None, :, :], 0.0), axis=2)  # [BLOCK_N, BLOCK_W]
                acc = tl.where(rm[:, None] == m, acc + tl.sum(a * masked, axis=1)[None, :], acc)
        if HAS_OFFSETS:
            c = tl.load(o_ptr + rn[:, None] * ng + g[None, :], mask=wn_mask, other=0.0)
            for m in tl.static_range(BLOCK_M):
                xm = tl.load(x_ptr + m * stride_xm + w[:, None] * 32 + rb[None, :],
                             mask=w_mask[:, None] & (rb[None, :] + m * 32 < M * 32), other=0.0).to(tl.float32)
                acc = tl.where(rm[:, None] == m, acc + tl.sum(c * tl.sum(xm, axis=1)[None, :], axis=1)[None, :], acc)
    out = y_ptr + rm[:, None] * N + rn[None, :]
    mask = (rm < M)[:, None] & n_mask[None, :]
    if USE_ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc, mask=mask)


@triton.jit
def _decode_tile(w_ptr, s_ptr, o_ptr, rn, n_mask, w0, N, KW, wpg, P: tl.constexpr, HAS_OFFSETS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """Weight tile [BLOCK_W*32, BLOCK_N] (k, n) in float32 for words [w0, w0 + BLOCK_W); zero past KW."""
    rw = tl.arange(0, BLOCK_W)
    rb = tl.arange(0, 32)
    w = w0 + rw
    ng = KW // wpg
    g = w // wpg
    mask = (w < KW)[:, None] & n_mask[None, :]
    tile = tl.zeros((BLOCK_W, 32, BLOCK_N), dtype=tl.float32)
    for p in tl.static_range(P):
        wv = tl.load(w_ptr + p * N * KW + rn[None, :] * KW + w[:, None], mask=mask, other=0)  # [BLOCK_W, BLOCK_N]
        a = tl.load(s_ptr + p * N * ng + rn[None, :] * ng + g[:, None], mask=mask, other=0.0)
        tile += tl.where(((wv[:, None, :] >> rb[None, :, None]) & 1) != 0, a[:, None, :], 0.0)
    if HAS_OFFSETS:
        tile += tl.load(o_ptr + rn[None, :] * ng + g[:, None], mask=mask, other=0.0)[:, None, :]
    return tl.reshape(tile, (BLOCK_W * 32, BLOCK_N))


@triton.jit
def bitplane_gemm_kernel(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, M, N, KW, wpg, stride_xm, tiles_per_split,
                         P: tl.constexpr, HAS_OFFSETS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_W: tl.constexpr, USE_ATOMIC: tl.constexpr, PRECISION: tl.constexpr):
    """Larger M: decode a weight tile in registers (to x's dtype; fp32 x uses PRECISION), tl.dot, split-K."""
    BLOCK_K: tl.constexpr = BLOCK_W * 32
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_mask = rm < M
    n_mask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t_end = tl.minimum((pid_k + 1) * tiles_per_split, tl.cdiv(KW, BLOCK_W))
    for t in range(pid_k * tiles_per_split, t_end):
        k = t * BLOCK_K + rk
        x = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :], mask=m_mask[:, None] & (k < KW * 32)[None, :],
                    other=0.0)
        w = _decode_tile(w_ptr, s_ptr, o_ptr, rn, n_mask, t * BLOCK_W, N, KW, wpg, P, HAS_OFFSETS, BLOCK_N, BLOCK_W)
        acc += tl.dot(x, w.to(x.dtype), input_precision=PRECISION)
    out = y_ptr + rm[:, None] * N + rn[None, :]
    mask = m_mask[:, None] & n_mask[None, :]
    if USE_ATOMIC:
        tl.atomic_add(out, acc, mask=mask)
    else:
        tl.store(out, acc, mask=mask)


@triton.jit
def bitplane_dequant_kernel(w_ptr, s_ptr, o_ptr, out_ptr, N, KW, wpg, P: tl.constexpr, HAS_OFFSETS: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    """Dense W^T [KW*32, N] in out's dtype, for "dequantize into a workspace + cuBLAS" at large M."""
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < N
    w = _decode_tile(w_ptr, s_ptr, o_ptr, rn, n_mask, t * BLOCK_W, N, KW, wpg, P, HAS_OFFSETS, BLOCK_N, BLOCK_W)
    k = t * BLOCK_W * 32 + tl.arange(0, BLOCK_W * 32)
    tl.store(out_ptr + k[:, None] * N + rn[None, :], w.to(out_ptr.dtype.element_ty),
             mask=(k < KW * 32)[:, None] & n_mask[None, :])
