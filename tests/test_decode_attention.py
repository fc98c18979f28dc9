"""One-token grouped-query attention (llmbin/nn/grouped_attention.py and its CPU op) against float64 SDPA and HF eager."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_llama

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the cpu op is not built")


def isa_paths() -> list[int]:
    """Every code path of the op this CPU can run: 1 portable, 3 AVX-512 (0 is 'the best', one of these)."""
    with open("/proc/cpuinfo") as f:
        return [1] + ([3] if "avx512f" in f.read() else [])


@pytest.fixture(params=["auto", "portable", "avx512"])
def op(request):
    from llmbin.kernels import ops

    found = ops.decode_attention_op()
    assert found is not None, ops.build_error()
    isa = {"auto": 0, "portable": 1, "avx512": 3}[request.param]
    if isa and isa not in isa_paths():
        pytest.skip(f"this CPU has no {request.param} path")
    return found if isa == 0 else (lambda q, k, v, mask, scale: torch.ops.llmbin_cpu.decode_attention_isa(
        q, k, v, mask, scale, isa))


@pytest.mark.parametrize("b,h,g,length,d", [(1, 3, 3, 256, 64), (2, 2, 7, 40, 64), (1, 1, 11, 70, 64), (1, 2, 6, 50, 128),
                                            (1, 4, 1, 33, 80), (1, 1, 5, 17, 8)])
def test_op_matches_float64_sdpa_for_every_mask_kind(op, b, h, g, length, d):
    gen = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(b, h, n, d, generator=gen) * 2 for n in (g, length, length))
    valid = torch.zeros(b, 1, 1, length, dtype=torch.bool)
    valid[0, ..., : length // 3 + 1] = True  # the static cache's written prefix
    valid[-1, ..., : length - 2] = True
    masks = {"bool": valid, "float": torch.where(valid, 0.0, float("-inf")) + torch.rand(b, 1, 1, length, generator=gen),
             "none": None}
    for name, mask in masks.items():
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.3,
                                             attn_mask=None if mask is None else mask if mask.dtype == torch.bool
                                             else mask.double())
        out = op(q, k, v, mask, 0.3)
        assert out.shape == q.shape and out.dtype == torch.float32
        assert (out.double() - ref).abs().max() < 2e-5, name


@pytest.mark.parametrize("d", [16, 64, 128])  # 64 and 128: the AVX-512 path's register-blocked rows
def test_op_fake_shape_and_fully_masked_rows(op, d):
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k = torch.randn(1, 2, 3, d), torch.randn(1, 2, 9, d)
    nothing = torch.zeros(1, 1, 1, 9, dtype=torch.bool)
    assert torch.equal(op(q, k, k, nothing, 0.25), torch.zeros_like(q))  # SDPA would return NaN
    with FakeTensorMode() as mode:
        fake = op(mode.from_tensor(q), mode.from_tensor(k), mode.from_tensor(k), None, 0.25)
    assert fake.shape == q.shape
    with pytest.raises(RuntimeError, match="mask must be"):
        op(q, k, k, torch.ones(1, 2, 1, 9, dtype=torch.bool), 0.25)


@pytest.mark.parametrize("d", [16, 64, 128])
def test_nan_propagates_alike_on_every_path(d):
    """A broken model's NaN must come out as NaN on every CPU, not as finite garbage on one of them."""
    from llmbin.kernels import ops

    assert ops.decode_attention_op() is not None, ops.build_error()
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 3, d, generator=gen)
    k, v = torch.randn(1, 2, 40, d, generator=gen), torch.randn(1, 2, 40, d, generator=gen)
    k[0, 1, 5] = float("nan")  # one cache slot of KV head 1 (an AVX-512 lane, not the tail)
    outs = {isa: torch.ops.llmbin_cpu.decode_attention_isa(q, k, v, None, 0.25, isa) for isa in isa_paths()}
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), scale=0.25)
    for isa, out in outs.items():
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"isa {isa}: NaN pattern differs from SDPA's"
        assert torch.isnan(out[0, 1]).all() and not torch.isnan(out[0, 0]).any()
        assert (out[0, 0].double() - ref[0, 0]).abs().max() < 2e-5


def test_decode_step_logits_match_hf_eager_attention():
    """A cached one-token step of a GQA model through llmbin_sdpa against transformers' own eager attention."""
    from transformers import StaticCache

    from llmbin.models.cache_api import cache_kwargs
    from llmbin.nn.grouped_attention import NAME, use_grouped_attention

    model = tiny_llama(seed=3).eval()  # 4 query heads on 2 KV heads
    ids = torch.randint(0, 1000, (1, 7), generator=torch.Generator().manual_seed(0))
    logits = {}
    for impl in ("eager", "llmbin"):
        if impl == "eager":
            model.set_attn_implementation("eager")
        else:
            model.set_attn_implementation("sdpa")
            assert use_grouped_attention(model) and model.config._attn_implementation == NAME
        cache = StaticCache(config=model.config, max_cache_len=32)
        with torch.inference_mode():
            model(input_ids=ids[:, :-1], use_cache=True, **cache_kwargs(cache))
            out = model(input_ids=ids[:, -1:], position_ids=torch.tensor([[6]]), use_cache=True, **cache_kwargs(cache))
        logits[impl] = out.logits[0, -1]
    assert (logits["llmbin"] - logits["eager"]).abs().max() < 1e-4
    assert use_grouped_attention(model) is False  # already switched: nothing to do
