"""Long runs that survive: SIGKILL mid-run then --resume gives the uninterrupted bytes; streaming; refusals."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import llmbin
from llmbin.errors import LlmbinError
from llmbin.recipe import Recipe


@pytest.fixture(scope="module")
def six_layer_dir(tmp_path_factory, tokenizer):
    from conftest import tiny_llama

    path = tmp_path_factory.mktemp("six") / "six-layer"
    tiny_llama(num_hidden_layers=6, hidden_size=192, intermediate_size=384).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cli(model, text, out, *extra):
    return [sys.executable, "-m", "llmbin.cli", "quantize", str(model), "--method", "gptq", "--bits", "3",
            "--group-size", "64", "--dataset", str(text), "--nsamples", "8", "--seqlen", "64", "-o", str(out), "-q",
            *extra]


def tensor_files(directory):
    names = sorted(p.name for p in directory.glob("*.safetensors")) + ["config.json", "model.safetensors.index.json"]
    return {n: (directory / n).read_bytes() for n in names}


def test_sigkill_then_resume_is_byte_identical(six_layer_dir, text_file, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(cli(six_layer_dir, text_file, reference), check=True, capture_output=True)
    out = tmp_path / "killed"
    partial = tmp_path / ".killed.partial"
    proc = subprocess.Popen(cli(six_layer_dir, text_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        manifest = partial / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text() or "{}").get("layers", {})) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists() and not (partial / "config.json").exists()  # nothing that looks complete
    refused = subprocess.run(cli(six_layer_dir, text_file, out), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(cli(six_layer_dir, text_file, out, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert tensor_files(out) == tensor_files(reference)
    assert not partial.exists()


def test_resume_refuses_a_different_recipe(six_layer_dir, text_file, tmp_path):
    out = tmp_path / "q"
    recipe = Recipe.create("gptq", {"bits": 3, "group_size": 64},
                           calibration={"dataset": str(text_file), "nsamples": 4, "seqlen": 32})
    from llmbin.checkpoint.workarea import WorkArea

    WorkArea(out, {"config": "x", "recipe": "old", "model_revision": "x", "calibration": "x"})
    with pytest.raises(LlmbinError, match="the calibration, config, model_revision, recipe differ"):
        llmbin.quantize(str(six_layer_dir), recipe, out=out, resume=True, verbose=False)
    with pytest.raises(LlmbinError, match="pass --resume"):
        llmbin.quantize(str(six_layer_dir), recipe, out=out, verbose=False)


def test_streamed_quantization_equals_in_memory(six_layer_dir, text_file, tmp_path):
    base = {"dataset": str(text_file), "nsamples": 4, "seqlen": 32}
    whole = tmp_path / "whole"
    # float embeddings: a streamed model has no full pass for the head's Hessian, so its head is rounded to nearest
    llmbin.quantize(str(six_layer_dir), Recipe.create("gptq", {"bits": 3}, calibration=base,
                                                      pipeline={"embeddings": "none"}), out=whole, verbose=False)
    streamed = tmp_path / "streamed"
    qm = llmbin.quantize(str(six_layer_dir), Recipe.create("gptq", {"bits": 3}, calibration=base,
                                                           pipeline={"stream": True, "embeddings": "none"}),
                         out=streamed, verbose=False)
    assert all(p.device.type == "meta" for p in qm.model.model.layers.parameters())  # layers never stayed resident
    # nor did their codes: each layer's results keep only their description once written
    assert qm.results and all(type(r.format).__name__ == "WrittenFormat" for r in qm.results.values())
    tensors = lambda d: {k: v for k, v in tensor_files(d).items() if k.endswith(".safetensors")}  # noqa: E731
    assert tensors(streamed) == tensors(whole)  # config.json differs only by the recipe's pipeline.stream
    model, _ = llmbin.load(streamed)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_memory_budget_refuses_whole_model_and_admits_streaming(six_layer_dir, text_file, tmp_path):
    # six layers of ~1.5 MB next to 38 MB of embeddings, plus the run's activations, statistics, solver copies, one
    # batch's forward and the codes: whole ~0.055 GB, streamed ~0.048 GB of host estimate
    cal = {"dataset": str(text_file), "nsamples": 8, "seqlen": 64}
    whole = Recipe.create("gptq", {"bits": 3}, calibration=cal, pipeline={"memory_budget_mb": 54})
    with pytest.raises(LlmbinError, match="exceeds pipeline.memory_budget_mb=54; --set pipeline.stream=true"):
        llmbin.quantize(str(six_layer_dir), whole, out=tmp_path / "whole", verbose=False)
    assert not (tmp_path / "whole").exists() and not (tmp_path / ".whole.partial").exists()
    streamed = Recipe.create("gptq", {"bits": 3}, calibration=cal, pipeline={"memory_budget_mb": 54, "stream": True})
    llmbin.quantize(str(six_layer_dir), streamed, out=tmp_path / "streamed", verbose=False)
    assert (tmp_path / "streamed" / "config.json").exists()


def test_ptq161_resume_after_a_failure_matches_uninterrupted(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    """PTQ1.61 carries a full-precision chain across layers: a resumed run must rebuild it for skipped layers."""
    from llmbin.methods.ptq161 import PTQ161

    recipe = Recipe.create("ptq161", {"epochs": 1, "bpw": 3.0}, calibration={"dataset": str(text_file), "nsamples": 4, "seqlen": 32})
    llmbin.quantize(str(tiny_llama_dir), recipe, out=tmp_path / "whole", verbose=False)
    original = PTQ161.quantize_layer

    def fail_on_layer_1(self, ctx):
        if ctx.index == 1:
            raise LlmbinError("simulated failure")
        return original(self, ctx)

    monkeypatch.setattr(PTQ161, "quantize_layer", fail_on_layer_1)
    with pytest.raises(LlmbinError, match="simulated failure"):
        llmbin.quantize(str(tiny_llama_dir), recipe, out=tmp_path / "cut", verbose=False)
    assert (tmp_path / ".cut.partial" / "layer-00000.safetensors").exists() and not (tmp_path / "cut").exists()
    monkeypatch.setattr(PTQ161, "quantize_layer", original)
    llmbin.quantize(str(tiny_llama_dir), recipe, out=tmp_path / "cut", resume=True, verbose=False)
    tensors = lambda d: {k: v for k, v in tensor_files(d).items() if k.endswith(".safetensors")}  # noqa: E731
    assert tensors(tmp_path / "cut") == tensors(tmp_path / "whole")
