"""Every listed architecture: layers found, layer-0 call captured, quantized, and still runs; saves and reloads."""
import pytest
import torch
import transformers as tf

import llmbin  # noqa: F401  (registers the quantizer)
from llmbin.checkpoint.writer import pack_model
from conftest import rtn_reference, save_packed
from llmbin.methods import get_method
from llmbin.models.walk import decoder_layers, find_linears
from llmbin.calibrate.pipeline import quantize_model
from llmbin.calibrate.quant_log import QuantLog
from llmbin.calibrate.options import PipelineOptions

H = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
         vocab_size=256, max_position_embeddings=128)
ARCHS = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, H),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, H),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {**H, "head_dim": 16}),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, H),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {**H, "head_dim": 16, "sliding_window": 8}),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {**H, "pad_token_id": 0}),
    "opt": (tf.OPTConfig, tf.OPTForCausalLM, dict(hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                                                   vocab_size=256, max_position_embeddings=128, word_embed_proj_dim=64)),
    "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128)),
    "qwen2_moe": (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM,
                  {**H, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                   "shared_expert_intermediate_size": 48}),
}


def build(arch):
    config_cls, model_cls, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    return model_cls(config_cls(**kwargs)).eval()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_quantize_every_architecture(arch, tmp_path):
    model = build(arch)
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        plain = (rtn_reference(model, 4, 32)(ids).logits - before).abs().mean()  # round-to-nearest, same grid
    _, layers = decoder_layers(model)
    assert len(layers) == 2
    log = QuantLog(verbose=False)
    method = get_method("gptq")(get_method("gptq").params_cls(bits=4, group_size=32))
    results = quantize_model(model, method, ids, PipelineOptions(batch_size=2), seed=0, log=log)
    assert results and all(name.count(".") >= 2 for name in results)
    assert set(results) == {f"{p}" for p in _all_linear_names(model)}
    with torch.no_grad():
        after = model(ids).logits
    assert torch.isfinite(after).all()
    # quantized, and better than plain rounding on the same 4-bit g32 grid (GPTQ: 0.47-0.66x of it on these models)
    assert 0 < (after - before).abs().mean() < 0.85 * plain
    modules = {n: r.format.meta() for n, r in results.items()}
    pack_model(model, results)
    model.config.quantization_config = {"quant_method": "llmbin", "format_version": 1, "modules": modules}
    model.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, after, atol=1e-5, rtol=1e-5)
    if arch == "qwen2_moe":
        expert_samples = [r for r in log.records if ".experts." in r.get("module", "")]
        assert expert_samples and all(r["samples"] >= 0 for r in expert_samples)


def _all_linear_names(model):
    prefix, layers = decoder_layers(model)
    return [f"{prefix}.{i}.{n}" for i, layer in enumerate(layers) for n in find_linears(layer)]


def test_unused_expert_gets_logged_rtn_fallback():
    model = build("qwen2_moe")
    ids = torch.randint(0, 256, (1, 3), generator=torch.Generator().manual_seed(1))  # 3 tokens x top-2 < 8 experts
    log = QuantLog(verbose=False)
    method = get_method("gptq")(get_method("gptq").params_cls(bits=4, group_size=32))
    results = quantize_model(model, method, ids, PipelineOptions(batch_size=2), seed=0, log=log)
    idle = [r["module"] for r in log.records if r.get("samples") == 0]
    assert idle, "6 routing slots cannot reach all 8 experts"
    notes = " ".join(r["note"] for r in log.records if "note" in r)
    for name in idle:
        assert ".experts." in name and f"{name} saw no calibration tokens: rtn used" in notes
        assert torch.isfinite(results[name].format.dequantize()).all()
    busy = [r for r in log.records if ".experts." in r.get("module", "") and r["samples"] > 0]
    assert busy and all("loss" in r for r in busy)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_packed_embeddings_every_architecture(arch, tmp_path):
    """Decoder linears and token embeddings (and head) packed; logits equal the same model with the dequantized
    matrices put back as float weights, before and after a save/reload (Gemma's scaled embedding included)."""
    import copy

    from llmbin.calibrate.embeddings import quantize_embeddings
    from llmbin.nn import QuantEmbedding

    model = build(arch)
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    log = QuantLog(verbose=False)
    method = get_method("gptq")(get_method("gptq").params_cls(bits=4, group_size=32))
    results = quantize_model(model, method, ids, PipelineOptions(batch_size=2), seed=0, log=log)
    reference = copy.deepcopy(model)  # fake-quant decoder, float embeddings
    record = quantize_embeddings(model, PipelineOptions(batch_size=2, embeddings="int4-g32", head="same"), ids, log)
    emb = model.get_input_embeddings()
    assert isinstance(emb, QuantEmbedding), record
    with torch.no_grad():
        reference.get_input_embeddings().weight.data = emb.packed_format().dequantize()
        head = model.get_output_embeddings()
        if record["output"] and "meta" in record["output"]:
            reference.get_output_embeddings().weight.data = head.packed_format().dequantize()
        expected = reference(ids).logits
        torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)
    save_packed(model, results, tmp_path, format_version=2, embeddings=record)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
