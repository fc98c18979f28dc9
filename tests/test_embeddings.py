"""The whole checkpoint small: source dtype on disk, tied matrices stored once, packed embeddings and head."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import llmbin
from llmbin.calibrate.embeddings import head_input_stats, parse_setting
from llmbin.errors import LlmbinError
from llmbin.checkpoint.size import model_size
from llmbin.nn import QuantEmbedding, TiedQuantHead
from llmbin.recipe import Recipe
from llmbin.checkpoint.storage_dtype import source_dtype, storage_tensor

from conftest import tiny_llama

IDS = torch.tensor([[1, 200, 3000, 42, 7, 99, 1234, 5], [17, 4, 49151, 0, 8, 300, 2, 9]])
V1 = Path(__file__).parent / "data" / "v1-checkpoint"


def recipe(text_file, embeddings="int4", **pipeline):
    return Recipe.create("gptq", {"bits": 2, "group_size": 32},
                         calibration={"dataset": str(text_file), "nsamples": 4, "seqlen": 32, "seed": 0},
                         pipeline={"embeddings": embeddings, **pipeline})


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tokenizer):
    """Tiny random Llamas with SmolLM2's tokenizer: tied and untied (float32), tied bf16 and fp16."""
    dirs = {}
    for name, tied, dtype in (("tied", True, None), ("untied", False, None), ("bf16", True, torch.bfloat16),
                              ("fp16", True, torch.float16)):
        model = tiny_llama(tie_word_embeddings=tied, seed=1 if tied else 2)
        if not tied:  # a head that differs from the embedding, so a wrong tie would show in the logits
            model.lm_head.weight.data = torch.randn_like(model.lm_head.weight) * 0.02
        if dtype is not None:
            model = model.to(dtype)
        path = tmp_path_factory.mktemp(name) / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = path
    return dirs


def tensors(directory):
    found = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        found.update(load_file(file))
    return found


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def matrix_keys(found, module):
    return sorted(k for k in found if k.startswith(module + "."))


@pytest.mark.parametrize("setting", ["none", "int8", "int4"])
@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_round_trip_keeps_logits_and_tying(kind, setting, sources, text_file, tmp_path):
    qm = llmbin.quantize(str(sources[kind]), recipe(text_file, setting), verbose=False)
    in_memory = logits(qm.model)
    out = tmp_path / "q"
    qm.save(out)
    found = tensors(out)
    emb, head = matrix_keys(found, "model.embed_tokens"), matrix_keys(found, "lm_head")
    packed = ["qweight", "scales", "zeros"]
    assert emb == [f"model.embed_tokens.{t}" for t in (["weight"] if setting == "none" else packed)]
    assert head == ([] if kind == "tied" else [f"lm_head.{t}" for t in (["weight"] if setting == "none" else packed)])

    loaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(loaded), in_memory, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(llmbin.load(out)[0]), in_memory, atol=1e-5, rtol=1e-5)
    if kind == "tied" and setting == "none":
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    elif kind == "tied":
        assert isinstance(loaded.lm_head, TiedQuantHead) and loaded.lm_head.embedding is loaded.model.embed_tokens
        for model in (loaded, qm.model):  # lm-eval calls tie_weights(): it must leave the packed matrix alone
            model.tie_weights()
            torch.testing.assert_close(logits(model), in_memory, atol=1e-5, rtol=1e-5)
    if setting != "none":
        assert isinstance(loaded.model.embed_tokens, QuantEmbedding)
        assert loaded.model.embed_tokens.qweight.dtype == torch.int32

    again = tmp_path / "again"  # saved again by transformers: the same tensors, still one copy when tied
    loaded.save_pretrained(again)
    second = tensors(again)
    assert sorted(second) == sorted(found) and all(torch.equal(second[k], found[k]) for k in found)


def test_packed_embedding_is_the_dequantized_matrix(sources, text_file):
    """Lookups and logits of the packed modules against UniformFormat.dequantize done by hand."""
    qm = llmbin.quantize(str(sources["tied"]), recipe(text_file, "int4-g32"), verbose=False)
    emb, head = qm.model.model.embed_tokens, qm.model.lm_head
    assert isinstance(emb, QuantEmbedding) and isinstance(head, TiedQuantHead)
    w = emb.packed_format().dequantize()
    assert emb.meta["bits"] == 4 and emb.meta["group_size"] == 32
    torch.testing.assert_close(emb(IDS), w[IDS], atol=0, rtol=0)
    x = torch.randn(3, w.shape[1])
    torch.testing.assert_close(head(x), x @ w.T, atol=1e-5, rtol=1e-5)
    assert head.embedding.backend(torch.float32).name in ("cpu", "torch")
    original = AutoModelForCausalLM.from_pretrained(sources["tied"]).model.embed_tokens.weight
    # GPTQ's error feedback moves single weights by more than half a step; the matrix stays close as a whole
    assert 0 < (w - original).norm() / original.norm() < 0.15


def test_head_statistics_are_the_final_hidden_states(sources):
    model = AutoModelForCausalLM.from_pretrained(sources["untied"]).eval()
    windows = torch.randint(0, 49152, (3, 16), generator=torch.Generator().manual_seed(0))
    stats = head_input_stats(model, windows, batch_size=2)
    with torch.no_grad():
        hidden = model.model(windows).last_hidden_state.reshape(-1, model.config.hidden_size)
    assert stats.tokens == 48
    torch.testing.assert_close(stats.hessian, 2 / 48 * hidden.T @ hidden, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("tied", torch.float32)])
def test_unquantized_tensors_keep_the_source_dtype(kind, dtype, sources, text_file, tmp_path):
    qm = llmbin.quantize(str(sources[kind]), recipe(text_file, "none"), verbose=False)
    in_memory = logits(qm.model)
    qm.save(tmp_path / "q")
    found = tensors(tmp_path / "q")
    floats = {k: t.dtype for k, t in found.items() if k.endswith(("norm.weight", "embed_tokens.weight"))}
    assert len(floats) == 2 * 2 + 2 and set(floats.values()) == {dtype}, floats
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["storage_dtype"] == str(dtype).removeprefix("torch.") and cfg["format_version"] == 2
    loaded, _ = llmbin.load(tmp_path / "q")  # runs in the dtype asked for (float32 by default)
    assert loaded.model.embed_tokens.weight.dtype == torch.float32
    torch.testing.assert_close(logits(loaded), in_memory, atol=1e-5, rtol=1e-5)


def test_gguf_sources_store_fp16_and_bf16_where_fp16_overflows():
    assert source_dtype("smollm2-135m", None) == torch.float16
    assert source_dtype("/models/x.Q4_1.gguf", None) == torch.float16
    t = torch.tensor([1.0, 70000.0])
    assert storage_tensor(t, torch.float16).dtype == torch.bfloat16
    assert storage_tensor(torch.tensor([1.0, 6e4]), torch.float16).dtype == torch.float16
    assert storage_tensor(torch.arange(3), torch.float16).dtype == torch.int64


def test_model_size_counts_every_file_byte_and_each_parameter_once(sources, text_file, tmp_path):
    for kind in ("tied", "untied"):
        out = tmp_path / kind
        llmbin.quantize(str(sources[kind]), recipe(text_file, "int4"), out=out, verbose=False)
        size = model_size(out, json.loads((out / "config.json").read_text())["quantization_config"])
        assert size["file_bytes"] == sum(f.stat().st_size for f in out.glob("*.safetensors"))
        params = AutoModelForCausalLM.from_pretrained(sources[kind]).num_parameters()
        assert size["parameters"] == params
        assert size["bits_per_parameter"] == round(8 * size["file_bytes"] / params, 4)
        assert size["times_smaller_than_fp16"] == round(2 * params / size["file_bytes"], 2)
    from llmbin.checkpoint.inspect import inspect_checkpoint, render

    text = render(inspect_checkpoint(tmp_path / "tied"))
    assert "times smaller than fp16" in text and "bits per parameter" in text and "lm_head (tied to" in text


def test_settings_are_checked(sources, text_file):
    assert parse_setting("int4", "k") == (4, 64) and parse_setting("int8", "k") == (8, -1)
    assert parse_setting("int4-g32", "k") == (4, 32) and parse_setting("int4-row", "k") == (4, -1)
    assert parse_setting("none", "k") is None and parse_setting("int6", "k") == (6, -1)
    for bad in ("int9", "int1", "int4-g", "float8", "int4-g0"):
        with pytest.raises(LlmbinError, match="pipeline.embeddings"):
            llmbin.quantize(str(sources["tied"]), recipe(text_file, bad), verbose=False)
    with pytest.raises(LlmbinError, match="ties its output head"):
        llmbin.quantize(str(sources["tied"]), recipe(text_file, "int4", head="int8"), verbose=False)


def test_untied_head_alone(sources, text_file, tmp_path):
    qm = llmbin.quantize(str(sources["untied"]), recipe(text_file, "none", head="int8"), out=tmp_path / "q", verbose=False)
    found = tensors(tmp_path / "q")
    assert "model.embed_tokens.weight" in found and "lm_head.qweight" in found and "lm_head.weight" not in found
    torch.testing.assert_close(logits(llmbin.load(tmp_path / "q")[0]), logits(qm.model), atol=1e-5, rtol=1e-5)


def test_version_1_checkpoint_made_before_still_loads(tmp_path):
    """tests/data/v1-checkpoint: written by llmbin before issue 17 (format_version 1, float32 base)."""
    with safe_open(str(V1.parent / "v1-expected.safetensors"), framework="pt") as f:
        ids, expected = f.get_tensor("ids"), f.get_tensor("logits")
    assert json.loads((V1 / "config.json").read_text())["quantization_config"]["format_version"] == 1
    copy = shutil.copytree(V1, tmp_path / "v1")
    for model in (llmbin.load(copy)[0], AutoModelForCausalLM.from_pretrained(copy)):
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_streamed_model_rounds_the_head_and_says_so(sources, text_file, tmp_path):
    qm = llmbin.quantize(str(sources["untied"]), recipe(text_file, "int4", stream=True), out=tmp_path / "q",
                         verbose=False)
    notes = [r["note"] for r in qm.log.records if "note" in r]
    assert any("rounded to nearest" in n for n in notes)
    assert [r["calibration"] for r in qm.log.records if r.get("module") == "lm_head"] == ["rtn"]
    loaded, _ = llmbin.load(tmp_path / "q")
    assert isinstance(loaded.lm_head, torch.nn.Module) and loaded.lm_head.meta["bits"] == 4
    assert torch.isfinite(logits(loaded)).all()
    # the stored head is plain rounding of the source's head (rtn_matrix, written in the tests): the same codes but
    # where a float16 scale moves a weight across a rounding boundary
    from conftest import rtn_matrix

    original = AutoModelForCausalLM.from_pretrained(sources["untied"]).lm_head.weight.detach()
    stored = loaded.lm_head.packed_format().dequantize()
    plain = rtn_matrix(original, 4, loaded.lm_head.meta["group_size"])
    assert (stored - plain).abs().mean() <= 0.05 * (plain - original).abs().mean()
