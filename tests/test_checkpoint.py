"""Packed checkpoint: from_pretrained == in-memory fake-quant, round trips, determinism, corruption refused."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import llmbin
from llmbin.errors import LlmbinError
from llmbin.recipe import Recipe


def recipe(text_file, method="gptq", **params):
    return Recipe.create(method, params or {"bits": 2, "group_size": 32},
                         calibration={"dataset": str(text_file), "nsamples": 4, "seqlen": 32, "seed": 0})


IDS = torch.tensor([[1, 200, 3000, 42, 7, 99, 1234, 5]])


@pytest.fixture(scope="module")
def packed(tmp_path_factory, tiny_llama_dir, text_file):
    """(checkpoint dir, logits of the in-memory fake-quant model)."""
    qm = llmbin.quantize(str(tiny_llama_dir), recipe(text_file), verbose=False)
    with torch.no_grad():
        fake_logits = qm.model(IDS).logits
    out = tmp_path_factory.mktemp("ckpt") / "q"
    qm.save(out)
    return out, fake_logits


def all_tensors(directory):
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_from_pretrained_and_load_match_fake_quant(packed):
    out, fake = packed
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)), fake, atol=1e-5, rtol=1e-5)
    model, tokenizer = llmbin.load(out)
    torch.testing.assert_close(logits(model), fake, atol=1e-5, rtol=1e-5)
    assert tokenizer is not None
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "llmbin" and cfg["format_version"] == 2
    assert cfg["provenance"]["calibration_token_hash"] and cfg["recipe"]["method"] == "gptq"
    assert (out / "quant_log.jsonl").read_text().count("\n") >= 14 and (out / "README.md").exists()
    assert not list(out.parent.glob(".q.partial*"))


def test_a_packed_checkpoint_attends_with_llmbin_unless_told(packed, monkeypatch):
    """LLMBIN_ATTENTION picks what a loaded checkpoint attends with (nn/grouped_attention.py), the same logits."""
    out, fake = packed
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config._attn_implementation == "llmbin_sdpa"
    monkeypatch.setenv("LLMBIN_ATTENTION", "sdpa")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert plain.config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits(plain), logits(model), atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("LLMBIN_ATTENTION", "flash")
    with pytest.raises(LlmbinError, match="LLMBIN_ATTENTION=flash: use llmbin"):
        AutoModelForCausalLM.from_pretrained(out)


def test_a_packed_checkpoint_fuses_its_elementwise_ops_unless_told(packed, monkeypatch):
    """LLMBIN_LAYER_OPS picks whether a loaded checkpoint's norms, MLP activation and rotary run as llmbin's ops
    (nn/fused_layers.py) or transformers' own: the same logits."""
    from llmbin.kernels.ops import layer_ops

    if layer_ops() is None:
        pytest.skip("this CPU has no AVX-512: the layers keep transformers' elementwise ops")
    out, _ = packed
    model = AutoModelForCausalLM.from_pretrained(out)
    layer = model.model.layers[0]
    assert [type(m).__name__ for m in (layer.input_layernorm, layer.mlp, layer.self_attn)] == [
        "FusedLlamaRMSNorm", "FusedLlamaMLP", "FusedLlamaAttention"]
    monkeypatch.setenv("LLMBIN_LAYER_OPS", "torch")
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert type(plain.model.layers[0].mlp).__name__ == "LlamaMLP"
    torch.testing.assert_close(logits(plain), logits(model), atol=1e-5, rtol=1e-5)


def test_save_load_save_identical(packed, tmp_path):
    out, _ = packed
    model, _ = llmbin.load(out)
    model.save_pretrained(tmp_path)
    first, second = all_tensors(out), all_tensors(tmp_path)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_same_seed_byte_identical(packed, tiny_llama_dir, text_file, tmp_path):
    out, _ = packed
    again = llmbin.quantize(str(tiny_llama_dir), recipe(text_file), out=tmp_path / "again", verbose=False)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert files == ["base.safetensors", "layer-00000.safetensors", "layer-00001.safetensors"]
    for name in files + ["config.json", "model.safetensors.index.json"]:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    assert again.stats["quantize_seconds"] > 0


def test_packed_size_matches_all_in_bits(packed):
    out, _ = packed
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    tensors = all_tensors(out)
    packed_bytes = sum(t.numel() * t.element_size() for k, t in tensors.items()
                       if k.rsplit(".", 1)[0] in cfg["modules"])
    fp16_bytes = cfg["bits"]["quantized_fp16_bytes"]
    assert packed_bytes <= cfg["bits"]["bpw_all_in"] / 16 * fp16_bytes * 1.01


def corrupt_copy(src, dst, edit_tensors=None, edit_config=None):
    import shutil

    shutil.copytree(src, dst)
    if edit_tensors:
        shard = dst / "layer-00000.safetensors"
        tensors = load_file(shard)
        edit_tensors(tensors)
        save_file(tensors, shard, metadata={"format": "pt"})
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_corrupted_checkpoints_refused(packed, tmp_path):
    out, _ = packed
    truncated = corrupt_copy(out, tmp_path / "truncated")
    data = (truncated / "layer-00000.safetensors").read_bytes()
    (truncated / "layer-00000.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LlmbinError, match="truncated or corrupted"):
        llmbin.load(truncated)

    name = "model.layers.0.self_attn.q_proj.qweight"
    missing = corrupt_copy(out, tmp_path / "missing", edit_tensors=lambda t: t.pop(name))
    with pytest.raises(LlmbinError, match=f"missing packed tensor {name}"):
        llmbin.load(missing)

    def reshape(t):
        t[name] = t[name][:, :-1].contiguous()

    wrong = corrupt_copy(out, tmp_path / "wrong", edit_tensors=reshape)
    with pytest.raises(LlmbinError, match=f"packed tensor {name} .* needs int32"):
        llmbin.load(wrong)

    def bump_version(cfg):
        cfg["quantization_config"]["modules"]["model.layers.0.self_attn.q_proj"]["version"] = 7

    version = corrupt_copy(out, tmp_path / "version", edit_config=bump_version)
    with pytest.raises(Exception, match="version 7 is not supported"):
        llmbin.load(version)
    with pytest.raises(Exception, match="missing packed tensor"):  # from_pretrained is strict too
        AutoModelForCausalLM.from_pretrained(missing)


def test_a_dense_fallback_is_said_at_load(packed, monkeypatch):
    """GPTQ layers on CPU run on the reference backend (a float copy of each weight): loading says so, once."""
    import llmbin.errors
    from llmbin.errors import LlmbinFallbackWarning

    monkeypatch.setattr(llmbin.errors, "_said", set())
    with pytest.warns(LlmbinFallbackWarning, match="uniform layers on cpu.*torch reference backend.*dense float copy"):
        llmbin.load(packed[0])
