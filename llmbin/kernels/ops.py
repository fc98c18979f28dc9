"""The compiled ops, reached through one Python surface.

The CPU extension (kernels/cpu) defines
    llmbin_cpu::lut_matmul(x, key, n, isa)            the packed product by the plan registered under `key`
    llmbin_cpu::lut_matmul_many(x, key0, n0, key1, n1, key2, n2, isa)
                                                      2-3 such products of one token side by side (key2 < 0: 2),
                                                      which runtime/fused_products.py puts in compiled decode steps
    llmbin_cpu::decode_attention(q, k, v, mask, scale) one query token over a static KV cache, grouped heads
    llmbin_cpu::prefill_attention(q, k, v, scale)     many causal query tokens, grouped heads, [B, L, H, D] out
    llmbin_cpu::rms_norm(x, weight, eps), silu_mul(gate, up), rotary_qk(q, k, cos, sin, head_dim)
                                                      a decoder layer's elementwise parts, one pass each
with shape-only ("fake") implementations registered when it loads, so torch.compile traces both into a graph
without breaking it. Call them through this module; None means the extension could not be built (build_error()).
"""
from __future__ import annotations

import torch

from .cpu.build import build_error, load_extension

__all__ = ["build_error", "decode_attention_op", "layer_ops", "lut_matmul_op", "prefill_attention_op"]

PREFILL_HEAD_DIMS = (64, 128)  # what prefill_attention.cpp's tiles are written for
PREFILL_MAX_TOKENS = 8192  # longer sequences go to SDPA: its per-thread score buffer is 16 G rows x the sequence


def decode_attention_op():
    """torch.ops.llmbin_cpu.decode_attention(q [B,Hkv,G,D], k, v [B,Hkv,L,D], mask or None, scale), or None."""
    return torch.ops.llmbin_cpu.decode_attention if load_extension() is not None else None


def lut_matmul_op():
    """torch.ops.llmbin_cpu.lut_matmul(x [..., K], plan key, N, isa) -> [..., N], or None."""
    return torch.ops.llmbin_cpu.lut_matmul if load_extension() is not None else None


def prefill_attention_op(head_dim: int, length: int):
    """torch.ops.llmbin_cpu.prefill_attention(q [B,H,L,D], k, v [B,Hkv,L,D], scale) -> [B,L,H,D], causal; None
    where it does not run (no extension, no AVX-512, another head dim, more than PREFILL_MAX_TOKENS tokens)."""
    ext = load_extension()
    if ext is None or ext.best_isa() != 3 or head_dim not in PREFILL_HEAD_DIMS or length > PREFILL_MAX_TOKENS:
        return None
    return torch.ops.llmbin_cpu.prefill_attention


def layer_ops():
    """torch.ops.llmbin_cpu (rms_norm, silu_mul, rotary_qk: float32, contiguous), or None where they do not run
    (no extension, no AVX-512)."""
    ext = load_extension()
    return torch.ops.llmbin_cpu if ext is not None and ext.best_isa() == 3 else None
