"""Many-token causal attention (kernels/cpu/prefill_attention.cpp through nn/grouped_attention.py) against float64
SDPA and transformers' own attention."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_llama

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the cpu op is not built")


@pytest.fixture(scope="module")
def op():
    from llmbin.kernels import ops

    assert ops.load_extension() is not None, ops.build_error()
    found = ops.prefill_attention_op(64, 512)
    if found is None:
        pytest.skip("this CPU has no AVX-512: prefill attention stays on SDPA")
    return found


def reference(q, k, v, scale):
    """float64 SDPA, causal, the KV heads repeated: [B, L, H, D] as the op returns it."""
    k, v = (t.double().repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q.double(), k, v, is_causal=True, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("b,h,hkv,length,d", [(4, 9, 3, 64, 64), (1, 14, 2, 100, 64), (2, 4, 4, 33, 128),
                                              (1, 6, 1, 2, 64), (1, 2, 2, 17, 128)])
def test_matches_float64_sdpa(op, b, h, hkv, length, d):
    """GQA and plain heads, both head dims, lengths that end mid-block; q as transformers hands it (a transposed
    view), k and v as strided views too."""
    gen = torch.Generator().manual_seed(length)
    q = torch.randn(b, length, h, d, generator=gen).transpose(1, 2) * 2
    k, v = (torch.randn(b, length, hkv, d, generator=gen).transpose(1, 2) for _ in range(2))
    out = op(q, k, v, 0.3)
    assert out.shape == (b, length, h, d) and out.is_contiguous()
    assert (out.double() - reference(q, k, v, 0.3)).abs().max() < 2e-5


def test_same_result_whatever_the_thread_count(op):
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 6, 90, 64, generator=gen), torch.randn(2, 2, 90, 64, generator=gen), torch.randn(
        2, 2, 90, 64, generator=gen)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(op(q, k, v, 0.125))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_nan_stays_where_sdpa_puts_it(op):
    """A broken model's NaN comes out as SDPA's does: a query's NaN in its own row, a key's in the rows after it."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 40, 64, generator=gen), torch.randn(1, 2, 40, 64, generator=gen), torch.randn(
        1, 2, 40, 64, generator=gen)
    q[0, 0, 7, 3] = float("nan")
    k[0, 1, 20, 0] = float("nan")
    out, ref = op(q, k, v, 0.125), reference(q, k, v, 0.125)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.isnan(out[0, 20:, 2:]).all() and not torch.isnan(out[0, :20, 2:]).any()
    assert (out.double() - ref).nan_to_num().abs().max() < 2e-5


def test_fake_shape_and_refusals(op):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from llmbin.kernels import ops

    q, k = torch.randn(1, 4, 9, 64), torch.randn(1, 2, 9, 64)
    with FakeTensorMode() as mode:
        fake = op(mode.from_tensor(q), mode.from_tensor(k), mode.from_tensor(k), 0.25)
    assert fake.shape == (1, 9, 4, 64)
    with pytest.raises(RuntimeError, match="head dim 64 or 128"):
        op(torch.randn(1, 2, 9, 32), torch.randn(1, 2, 9, 32), torch.randn(1, 2, 9, 32), 0.25)
    with pytest.raises(RuntimeError, match="multiple of Hkv"):
        op(torch.randn(1, 3, 9, 64), k, k, 0.25)
    assert ops.prefill_attention_op(80, 100) is None and ops.prefill_attention_op(64, ops.PREFILL_MAX_TOKENS + 1) is None


def model_64():
    """A tiny GQA Llama with head dim 64 (4 query heads on 2 KV heads), what the op serves."""
    return tiny_llama(seed=5, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


def counted_op_calls(monkeypatch) -> list:
    """The prefill op's calls from here on (each an (head dim, length) pair)."""
    from llmbin.kernels import ops

    calls, real = [], ops.prefill_attention_op
    monkeypatch.setattr(ops, "prefill_attention_op", lambda *a: calls.append(a) or real(*a))
    return calls


def attend_with(model, impl: str):
    """transformers' eager attention, or llmbin's (switched from sdpa as a loaded checkpoint is)."""
    from llmbin.nn.grouped_attention import use_grouped_attention

    model.set_attn_implementation("eager" if impl == "eager" else "sdpa")
    assert impl == "eager" or use_grouped_attention(model)
    return model


def test_model_logits_match_eager_attention_and_the_op_runs(op, monkeypatch):
    calls = counted_op_calls(monkeypatch)
    model = model_64()
    ids = torch.randint(0, 1000, (3, 45), generator=torch.Generator().manual_seed(0))
    logits = {}
    for impl in ("eager", "llmbin"):
        with torch.inference_mode():
            logits[impl] = attend_with(model, impl)(input_ids=ids, use_cache=False).logits
    assert len(calls) == model.config.num_hidden_layers  # every layer ran the op, not SDPA
    assert (logits["llmbin"] - logits["eager"]).abs().max() < 1e-4


def test_static_cache_prefill_then_decode_matches_eager(op, monkeypatch):
    """The prompt's pass over an empty static cache (more key slots than tokens, no mask) runs the op on the written
    slots only; the next token's step then sees the same cache as eager attention's."""
    from transformers import StaticCache

    from llmbin.models.cache_api import cache_kwargs

    calls = counted_op_calls(monkeypatch)
    model = model_64()
    ids = torch.randint(0, 1000, (1, 21), generator=torch.Generator().manual_seed(2))
    logits = {}
    for impl in ("eager", "llmbin"):
        attend_with(model, impl)
        cache = StaticCache(config=model.config, max_cache_len=64)
        with torch.inference_mode():
            first = model(input_ids=ids[:, :-1], use_cache=True, **cache_kwargs(cache)).logits
            step = model(input_ids=ids[:, -1:], position_ids=torch.tensor([[20]]), use_cache=True,
                         **cache_kwargs(cache)).logits
        logits[impl] = torch.cat([first, step], dim=1)
    assert len(calls) == model.config.num_hidden_layers
    assert (logits["llmbin"] - logits["eager"]).abs().max() < 1e-4


@pytest.mark.parametrize("padded", [True, False])
def test_padding_masks_and_gradients_stay_on_sdpa(op, monkeypatch, padded):
    """What the op does not compute (a padding mask; a backward pass, here with and without padding) goes to
    transformers' SDPA, which gives the eager attention's values and gradients."""
    from llmbin.kernels import ops

    model = model_64()
    ids = torch.randint(0, 1000, (2, 30), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0 if padded else 1  # left padding
    out = {}
    for impl in ("eager", "llmbin"):
        attend_with(model, impl)
        if impl == "llmbin":
            monkeypatch.setattr(ops, "prefill_attention_op", lambda *a: pytest.fail("the op ran where it must not"))
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask if padded else None).logits
        logits[mask.bool()].square().mean().backward()
        out[impl] = logits.detach()[mask.bool()], model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    assert (out["llmbin"][0] - out["eager"][0]).abs().max() < 1e-4
    assert torch.allclose(out["llmbin"][1], out["eager"][1], rtol=1e-3, atol=1e-6)
