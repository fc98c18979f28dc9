"""Several packed products of one input in one call (kernels/cpu/fused_products.h) and the graph pass that makes a
compiled decode step use it (runtime/fused_products.py): bit for bit the single calls."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from llmbin.kernels import cpu
from llmbin.nn import QuantLinear
from llmbin.runtime.fused_products import FuseSharedInputProducts

from conftest_kernels import make_format, random_uniform

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the cpu backend falls back to torch")


@pytest.fixture(autouse=True)
def integer_kernel(monkeypatch):
    monkeypatch.setenv("LLMBIN_CPU_EXACT", "0")  # integer-code layers on their own kernel (conftest.py: bit planes)


def states(formats):
    return [cpu.prepare_state(QuantLinear.from_format(f)) for f in formats]


def singles(sts, x):
    return [torch.ops.llmbin_cpu.lut_matmul(x, s.plan.key, s.out_features, 0) for s in sts]


def many(sts, x):
    """lut_matmul_many's products (side by side in its output), split back per plan."""
    args = [v for s in sts for v in (s.plan.key, s.out_features)] + [-1, 0] * (3 - len(sts))
    y = torch.ops.llmbin_cpu.lut_matmul_many(x, *args, 0)
    assert y.is_contiguous() and y.shape == (*x.shape[:-1], sum(s.out_features for s in sts))
    return y.split([s.out_features for s in sts], -1)


CASES = {  # q/k/v-like (same K and group, 40 rows: a partial row block), mixed bit widths, groups that differ,
    # and an integer layer beside a bit-plane one: the last two run plan by plan
    "qkv": [random_uniform(96, 160, 4, 32, seed=1), random_uniform(40, 160, 4, 32, seed=2),
            random_uniform(40, 160, 4, 32, seed=3)],
    "bits": [random_uniform(64, 544, 2, 128, seed=4), random_uniform(200, 544, 8, 128, seed=5),
             random_uniform(33, 544, 5, 128, seed=6)],
    "groups": [random_uniform(64, 256, 4, 64, seed=7), random_uniform(64, 256, 4, 128, seed=8)],
    "small": [random_uniform(64, 256, 4, 128, seed=s) for s in (11, 12, 13)],  # too small to split alone
    "mixed": [random_uniform(64, 128, 4, 32, seed=9), make_format(64, 128, 32, 1, "ptq161", seed=10)],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("threads", [1, 2])
def test_many_equals_the_single_products(case, threads, ext):
    sts = states(CASES[case])
    k = CASES[case][0].in_features
    gen = torch.Generator().manual_seed(0)
    with cpu.gemv_threads(threads):
        for shape in ((1, k), (1, 1, k), (3, k)):  # one token (the fused path) and several (plan by plan)
            x = torch.randn(*shape, generator=gen) * torch.rand(k, generator=gen) * 3
            for got, want in zip(many(sts, x), singles(sts, x)):
                assert torch.equal(got, want), (case, shape)


def test_many_refuses_a_wrong_row_count(ext):
    s = states([random_uniform(32, 64, 4, 32)])[0]
    with pytest.raises(RuntimeError, match="rows, not"):
        torch.ops.llmbin_cpu.lut_matmul_many(torch.randn(1, 64), s.plan.key, 32, s.plan.key, 31, -1, 0, 0)


def test_pass_fuses_products_of_one_input_and_keeps_the_results(ext):
    q, k, v, other = states([random_uniform(96, 160, 4, 32, seed=1), random_uniform(32, 160, 4, 32, seed=2),
                             random_uniform(32, 160, 4, 32, seed=3), random_uniform(48, 96, 4, 32, seed=4)])
    op = torch.ops.llmbin_cpu.lut_matmul

    def step(x, h):
        return (op(x, q.plan.key, 96, 0) + 1, op(x, k.plan.key, 32, 0) * 2, op(x, v.plan.key, 32, 0),
                op(h, other.plan.key, 48, 0))

    x, h = torch.randn(1, 160), torch.randn(1, 96)
    gm = make_fx(step, tracing_mode="fake")(x, h)
    want = step(x, h)
    FuseSharedInputProducts()(gm.graph)
    gm.graph.lint()
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.llmbin_cpu.lut_matmul_many.default) == 1  # q, k, v share x
    assert targets.count(torch.ops.llmbin_cpu.lut_matmul.default) == 1  # h's product stays single
    assert targets.count(torch.ops.aten.slice.Tensor) == 3
    for got, ref in zip(gm(x, h), want):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("case,alone", [("bits", 1), ("small", 0)])
def test_one_token_splits_all_layers_in_one_pool_run(case, alone, ext):
    """The fused path ran (not plan by plan): one pool run for the group, where the single calls split only the
    layers big enough to split (`alone` of them)."""
    sts = states(CASES[case])
    x = torch.randn(1, CASES[case][0].in_features)
    with cpu.gemv_threads(2):
        many(sts, x)
        before = ext.gemv_pool_runs()
        many(sts, x)
        fused = ext.gemv_pool_runs() - before
        singles(sts, x)
        single = ext.gemv_pool_runs() - before - fused
    assert (fused, single) == (1, alone)
