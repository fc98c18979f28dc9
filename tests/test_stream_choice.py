"""pipeline.stream=auto: a run streams its decoder layers exactly when the whole float model would not fit the memory
available, unless a stage needs the whole model or the weights cannot be streamed, and says so in one line."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import llmbin
from llmbin.errors import LlmbinError
from llmbin.models.loading import load_config
from llmbin.recipe import Recipe
from llmbin.recipe import stream_choice


def recipe(text_file, **pipeline):
    return Recipe.create("rtn", {"bits": 4}, calibration={"dataset": str(text_file), "nsamples": 2, "seqlen": 32},
                         pipeline={"embeddings": "none", **pipeline})


def notes(qm) -> list[str]:
    return [r["note"] for r in qm.log.records if r.get("note", "").startswith("pipeline.stream=auto")]


def layer_tensors(directory) -> dict:
    return {f.name: load_file(f) for f in sorted(directory.glob("layer-*.safetensors"))}


def test_float_weight_bytes_counts_the_model_once(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    direct = sum(p.numel() for p in model.parameters()) * 4  # tied embedding and head counted once by torch too
    assert stream_choice.float_weight_bytes(load_config(str(tiny_llama_dir))) == direct


def test_auto_streams_only_when_the_whole_model_would_not_fit(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    fits = llmbin.quantize(str(tiny_llama_dir), recipe(text_file), out=tmp_path / "fits", verbose=False)
    assert not notes(fits) and fits.info["recipe"]["pipeline"]["stream"] is False
    assert all(p.device.type == "cpu" for p in fits.model.model.layers.parameters())

    monkeypatch.setattr(stream_choice, "available_bytes", lambda: 2**20)  # 1 MB free: the model cannot be loaded whole
    asked = recipe(text_file)
    tight = llmbin.quantize(str(tiny_llama_dir), asked, out=tmp_path / "tight", verbose=False)
    assert asked.pipeline.stream == "auto"  # the caller's recipe is left as it was, for its next model
    assert len(notes(tight)) == 1 and "streaming the decoder layers" in notes(tight)[0]
    assert tight.info["recipe"]["pipeline"]["stream"] is True  # the checkpoint records what the run did
    assert all(p.device.type == "meta" for p in tight.model.model.layers.parameters())
    # streaming changes where the weights live, not the codes: the same layers as the whole-model run
    assert layer_tensors(tmp_path / "tight").keys() == layer_tensors(tmp_path / "fits").keys()
    for name, tensors in layer_tensors(tmp_path / "tight").items():
        assert all(torch.equal(t, layer_tensors(tmp_path / "fits")[name][k]) for k, t in tensors.items())

    forced = llmbin.quantize(str(tiny_llama_dir), recipe(text_file, stream="false"), verbose=False)
    assert not notes(forced) and all(p.device.type == "cpu" for p in forced.model.model.layers.parameters())


def test_auto_loads_whole_for_stages_that_need_it_and_for_weights_it_cannot_stream(tiny_llama_dir, text_file, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(stream_choice, "available_bytes", lambda: 2**20)
    with_distill = recipe(text_file)
    with_distill.distill.enabled, with_distill.distill.nsamples, with_distill.distill.seqlen = True, 2, 32
    with_distill.distill.eval_nsamples = 1
    choice = []
    assert stream_choice.choose_stream(with_distill, load_config(str(tiny_llama_dir)), choice.append) is False
    assert len(choice) == 1 and "distill.enabled needs it" in choice[0] and "distill.enabled=false" in choice[0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    pickled = tmp_path / "bin-weights"  # torch .bin weights only: nothing to stream from
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(pickled)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    qm = llmbin.quantize(str(pickled), recipe(text_file), verbose=False)
    said = notes(qm)
    assert len(said) == 2 and "cannot be streamed" in said[1] and qm.info["recipe"]["pipeline"]["stream"] is False
    with pytest.raises(LlmbinError, match="streaming needs safetensors"):  # asked for explicitly: refused, not switched
        llmbin.quantize(str(pickled), recipe(text_file, stream=True), verbose=False)


def test_stream_settings_are_checked(tiny_llama_dir, text_file):
    from llmbin.calibrate.options import stream_setting

    assert [stream_setting(v) for v in (True, False, "auto", "true", "off", "1")] == \
        ["true", "false", "auto", "true", "false", "true"]
    with pytest.raises(LlmbinError, match="pipeline.stream must be auto, true or false, not 'sometimes'"):
        llmbin.quantize(str(tiny_llama_dir), recipe(text_file, stream="sometimes"), verbose=False)
