"""Helpers shared by the kernel tests: the case grid of KERNELS.md and the reference check."""
from __future__ import annotations

import itertools

import torch

from llmbin.formats import UniformFormat
from llmbin.runtime.kernel_bench import random_bitplane

NS, KS, MS = (1, 7, 64, 257), (32, 128, 544), (1, 2, 3, 16, 33)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3}
# what a method's layer looks like: plain binarization, PTQ1.61 (salient bitmap order, r1 folded into A and C),
# PB-LLM, DB-LLM-like (no offsets), and every optional part at once (random perm as indices, out_scale)
KINDS = ("plain", "ptq161", "pbllm", "nooffsets", "permuted")


def make_format(n: int, k: int, group, planes: int, kind: str, seed: int = 0):
    g = k if group == "K" else group
    kw = {"plain": {}, "ptq161": dict(in_scale=True, perm="mask", k_salient=max(1, k // 5)),
          "pbllm": dict(sparse=0.1), "nooffsets": dict(offsets=False, out_scale=True),
          "permuted": dict(in_scale=True, out_scale=True, perm=True, k_salient=max(1, k // 5))}[kind]
    return random_bitplane(n, k, planes, g, generator=torch.Generator().manual_seed(seed), **kw)


def full_grid():
    """Every (N, K, G, P) of the spec, each with a method kind rotating through KINDS."""
    grid = itertools.product(NS, KS, (32, 128, "K"), (1, 2))
    return [(n, k, g, p, KINDS[i % len(KINDS)]) for i, (n, k, g, p) in enumerate(grid)]


def case_id(case) -> str:
    n, k, g, p, kind = case
    return f"N{n}-K{k}-G{g}-P{p}-{kind}"


def reference(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """fp32 math with the packed weights' dense form `w` (fmt.dequantize()) on the same (dtype-rounded)
    inputs, rounded to x.dtype: what an exact kernel returns."""
    return (x.float() @ w.T).to(x.dtype)


def rel_err(y: torch.Tensor, ref: torch.Tensor, w: torch.Tensor | None = None, x: torch.Tensor | None = None) -> float:
    """|y - ref| / |ref|; given the product's w and x, the denominator is at least |(|x| @ |w|^T)| / sqrt(K), the typical
    size of a K-term sum: with few outputs (N = M = 1) the sum can cancel to near zero by chance, and float32
    rounding is relative to the terms, not to what is left of them."""
    assert y.shape == ref.shape and y.dtype == ref.dtype, (y.shape, ref.shape, y.dtype, ref.dtype)
    assert torch.isfinite(y).all(), "non-finite outputs (unwritten poisoned values?)"
    scale = ref.float().norm()
    if w is not None and x is not None:
        terms = x.float().abs() @ w.float().abs().T
        scale = torch.maximum(scale, terms.norm() / w.shape[-1] ** 0.5)
    return ((y.float() - ref.float()).norm() / scale.clamp_min(1e-12)).item()


def random_uniform(n: int, k: int, bits: int, group: int, seed: int = 0) -> UniformFormat:
    """A GPTQ/RTN-shaped integer-code layer: random codes, fp16 scales, zero points."""
    g = torch.Generator().manual_seed(seed)
    ng = -(-k // group)
    return UniformFormat(torch.randint(0, 2 ** bits, (n, k), generator=g, dtype=torch.int32),
                         (torch.rand(n, ng, generator=g) * 0.05 + 0.001).half(),
                         torch.randint(0, 2 ** bits, (n, ng), generator=g, dtype=torch.uint8), bits, group)
