"""A decoder layer's elementwise parts as one op each (kernels/cpu/layer_ops.cpp through nn/fused_layers.py) against
the direct formulas in float64 and against transformers' own modules."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the cpu ops are not built")


@pytest.fixture(scope="module")
def ops():
    from llmbin.kernels import ops as kops

    assert kops.load_extension() is not None, kops.build_error()
    found = kops.layer_ops()
    if found is None:
        pytest.skip("this CPU has no AVX-512: the layers keep transformers' elementwise ops")
    return found


@pytest.mark.parametrize("d", [576, 100, 16, 7])
def test_rms_norm_is_the_formula(ops, d):
    """Row lengths with and without a tail of 16."""
    gen = torch.Generator().manual_seed(d)
    x, w = torch.randn(3, 5, d, generator=gen) * 3, torch.randn(d, generator=gen)
    xd = x.double()
    want = w.double() * xd / torch.sqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5)
    got = ops.rms_norm(x, w, 1e-5)
    assert got.shape == x.shape and (got.double() - want).abs().max() < 4e-6 * want.abs().max()


def test_silu_mul_is_the_formula(ops):
    """Large and small gates (e^x's range ends), zero, infinities and NaN as torch gives them; an odd length."""
    gen = torch.Generator().manual_seed(1)
    g = torch.cat([torch.randn(1000, generator=gen) * 6, torch.tensor([0., -0., 90., -90., 200., -200., 1e-30,
                                                                       float("inf"), float("-inf"), float("nan")])])
    u = torch.randn(g.numel(), generator=gen)
    got, want = ops.silu_mul(g, u), F.silu(g.double()) * u.double()
    assert torch.equal(got.isnan(), want.isnan())
    finite = ~want.isnan()
    assert torch.allclose(got[finite].double(), want[finite], rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("d,cos_batch", [(64, 1), (128, 2), (32, 2)])
def test_rotary_is_transformers_rotate_half(ops, d, cos_batch):
    """q and k rotated as apply_rotary_pos_emb does, bit for bit in float32 (the same roundings) and near float64,
    left in the projections' [B, T, heads D] layout; cos and sin shared by the batch or one per sequence."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    gen = torch.Generator().manual_seed(d)
    q, k = torch.randn(2, 11, 3 * d, generator=gen), torch.randn(2, 11, d, generator=gen)
    angle = torch.rand(cos_batch, 11, d // 2, generator=gen) * 20
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    rq, rk = ops.rotary_qk(q, k, cos, sin, d)
    heads = lambda t: t.double().view(2, 11, -1, d).transpose(1, 2)
    wq, wk = apply_rotary_pos_emb(heads(q), heads(k), cos.double(), sin.double())
    assert (heads(rq) - wq).abs().max() < 1e-5 and (heads(rk) - wk).abs().max() < 1e-5
    fq, fk = apply_rotary_pos_emb(heads(q).float(), heads(k).float(), cos, sin)
    assert torch.equal(heads(rq).float(), fq) and torch.equal(heads(rk).float(), fk)


def test_ops_do_not_depend_on_the_thread_count(ops):
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(64, 576, generator=gen), torch.randn(576, generator=gen)
    g, u = torch.randn(64, 1536, generator=gen), torch.randn(64, 1536, generator=gen)
    q, k, cs = torch.randn(1, 64, 576, generator=gen), torch.randn(1, 64, 192, generator=gen), torch.randn(1, 64, 64)
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append([ops.rms_norm(x, w, 1e-5), ops.silu_mul(g, u), *ops.rotary_qk(q, k, cs, cs, 64)])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))


def test_ops_refuse_what_they_do_not_compute(ops):
    with pytest.raises(RuntimeError, match="float32"):
        ops.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64), 1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.silu_mul(torch.randn(8, 4).t(), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.rotary_qk(torch.randn(1, 2, 48), torch.randn(1, 2, 48), torch.randn(1, 2, 48), torch.randn(1, 2, 48), 48)


def tiny(kind: str):
    import transformers as t

    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=256, intermediate_size=520, num_hidden_layers=2,
                  max_position_embeddings=128)
    if kind == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **common)).eval()
    return t.Qwen2ForCausalLM(t.Qwen2Config(num_attention_heads=2, num_key_value_heads=1, **common)).eval()


def op_names(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("llmbin_cpu::")}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fused_model_equals_transformers(ops, kind):
    """Logits (with llmbin's attention and with eager attention), a static-cache prefill then decode, and greedy
    generation with a dynamic cache, against an unfused copy; the ops are seen running."""
    from transformers import StaticCache

    from llmbin.models.cache_api import cache_kwargs
    from llmbin.nn.fused_layers import use_fused_layers
    from llmbin.nn.grouped_attention import use_grouped_attention

    model = tiny(kind)
    plain = copy.deepcopy(model)
    assert use_fused_layers(model) == 9  # 2 layers x (2 norms, MLP, attention) + the final norm
    assert type(model.model.layers[0].self_attn).__name__.startswith("Fused")
    assert isinstance(model.model.layers[0].self_attn, type(plain.model.layers[0].self_attn))
    ids = torch.randint(0, 300, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for impl in ("eager", "sdpa"):
            for m in (model, plain):
                m.config._attn_implementation = impl
                if impl == "sdpa":
                    assert use_grouped_attention(m)
            want = plain(ids).logits
            assert op_names(lambda: model(ids)) >= {"llmbin_cpu::rms_norm", "llmbin_cpu::silu_mul",
                                                    "llmbin_cpu::rotary_qk"}
            torch.testing.assert_close(model(ids).logits, want, atol=2e-5, rtol=2e-5)
        logits = []
        for m in (model, plain):
            cache = StaticCache(config=m.config, max_cache_len=48)
            first = m(ids[:1, :30], use_cache=True, **cache_kwargs(cache)).logits
            nxt = m(ids[:1, 30:31], use_cache=True, **cache_kwargs(cache),
                    cache_position=torch.tensor([30])).logits
            logits.append(torch.cat([first[:, -1:], nxt], 1))
        torch.testing.assert_close(logits[0], logits[1], atol=2e-5, rtol=2e-5)
        assert torch.equal(model.generate(ids[:1, :10], max_new_tokens=8, do_sample=False),
                           plain.generate(ids[:1, :10], max_new_tokens=8, do_sample=False))


def test_gradients_and_training_keep_transformers_ops(ops):
    """The ops have no backward: with a gradient wanted every module runs transformers' own maths, and the
    gradients are the unfused model's."""
    from llmbin.nn.fused_layers import use_fused_layers

    model = tiny("llama")
    plain = copy.deepcopy(model)
    use_fused_layers(model)
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(2))
    assert op_names(lambda: model(ids).logits.sum().backward()) == set()
    plain(ids).logits.sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_the_switch(monkeypatch):
    """LLMBIN_LAYER_OPS=torch leaves a model alone; a bad value is refused naming itself (on any CPU)."""
    from llmbin.errors import LlmbinError
    from llmbin.nn.fused_layers import use_fused_layers

    monkeypatch.setenv("LLMBIN_LAYER_OPS", "torch")
    assert use_fused_layers(tiny("llama")) == 0
    monkeypatch.setenv("LLMBIN_LAYER_OPS", "fast")
    with pytest.raises(LlmbinError, match="LLMBIN_LAYER_OPS=fast"):
        use_fused_layers(tiny("llama"))


def test_other_activations_keep_their_mlp(ops):
    from llmbin.nn.fused_layers import use_fused_layers
    import transformers as t

    model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96,
                                             num_hidden_layers=1, num_attention_heads=1, hidden_act="gelu"))
    use_fused_layers(model)
    assert type(model.model.layers[0].mlp).__name__ == "LlamaMLP"
    assert type(model.model.layers[0].input_layernorm).__name__ == "FusedLlamaRMSNorm"


def test_a_fused_model_pickles(ops, tmp_path):
    """torch.save of a whole model finds the Fused classes by name, and the copy still fuses."""
    from llmbin.nn.fused_layers import use_fused_layers

    model = tiny("qwen2")
    use_fused_layers(model)
    torch.save(model, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(again.model.layers[0].mlp).__name__ == "FusedQwen2MLP"
    ids = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_an_attention_forward_not_reproduced_stays_and_says_so(ops):
    """An attention class of a known name whose forward is not the transformers one the fused class reproduces (as
    in transformers 5.16, the floor) keeps its own forward, with a one-time warning; norms and MLP still fuse."""
    import transformers.models.llama.modeling_llama as llama

    from llmbin.errors import LlmbinFallbackWarning
    from llmbin.nn.fused_layers import use_fused_layers

    class LlamaAttention(llama.LlamaAttention):
        def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                    **kwargs):
            return super().forward(hidden_states, position_embeddings, attention_mask, cache=past_key_values,
                                   **kwargs)

    model = tiny("llama")
    layer = model.model.layers[0]
    layer.self_attn.__class__ = LlamaAttention
    with pytest.warns(LlmbinFallbackWarning, match="rotary embedding runs as transformers' own ops"):
        use_fused_layers(model)
    assert type(layer.self_attn) is LlamaAttention
    assert type(model.model.layers[1].self_attn).__name__ == "FusedLlamaAttention"
    assert type(layer.mlp).__name__ == "FusedLlamaMLP"


def test_no_ops_no_fused_classes(monkeypatch):
    """Where the ops do not run (no extension, no AVX-512) no module changes class: the check is made once, at
    use_fused_layers, not per call."""
    import llmbin.kernels.ops as kops
    from llmbin.nn.fused_layers import use_fused_layers

    monkeypatch.setattr(kops, "layer_ops", lambda: None)
    model = tiny("llama")
    assert use_fused_layers(model) == 0
    assert type(model.model.layers[0].mlp).__name__ == "LlamaMLP"
