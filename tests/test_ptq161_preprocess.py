"""PTQ1.61's quantization preprocessing: LoRA on the fake-quantized model, merge, quantize again with pass 1's masks."""
import pytest
import torch

import llmbin
import llmbin.methods.ptq161 as ptq161_module
import llmbin.methods.ptq161_preprocess as pre
from llmbin.errors import LlmbinError
from llmbin.methods.ptq161 import PTQ161
from llmbin.recipe import Recipe


def recipe(text_file, **extra):
    params = {"epochs": 1, "precision": "fp32", "bpw": 3.0, "preprocess.enabled": True, "preprocess.epochs": 3,
              "preprocess.lr": 1e-3, **extra}
    return Recipe.create("ptq161", params, {"dataset": str(text_file), "nsamples": 8, "seqlen": 64, "seed": 0})


def tensor_files(directory):
    names = sorted(p.name for p in directory.glob("*.safetensors")) + ["config.json", "model.safetensors.index.json"]
    return {n: (directory / n).read_bytes() for n in names}


class Spy:
    """Wraps run_preprocess / train_lora / quantize_layer to record what happened (and optionally interrupt)."""

    def __init__(self, monkeypatch, alter_masks=None):
        self.masks, self.stats, self.lora_calls, self.layer_calls = None, None, 0, []
        self.lora_windows, self.layer_epochs = [], []
        real_run, real_train, real_layer = pre.run_preprocess, pre.train_lora, PTQ161.quantize_layer
        self.interrupt_lora = self.interrupt_pass2 = False

        def run(method, model, ctx, work, quantize_pass):
            masks, stats, area = real_run(method, model, ctx, work, quantize_pass)
            self.masks, self.stats = masks, stats
            if alter_masks:
                masks = self.masks = {n: alter_masks(m) for n, m in masks.items()}
            return masks, stats, area

        def train(*args, **kwargs):
            self.lora_calls += 1
            self.lora_windows.append(len(args[2]))
            if self.interrupt_lora:
                raise KeyboardInterrupt  # a kill: nothing is cleaned up
            return real_train(*args, **kwargs)

        def layer(method, ctx):
            self.layer_calls.append((bool(method.fixed_masks), ctx.index))
            self.layer_epochs.append(method.params.epochs)
            if self.interrupt_pass2 and method.fixed_masks and ctx.index == 1:
                raise KeyboardInterrupt
            return real_layer(method, ctx)

        monkeypatch.setattr(ptq161_module, "run_preprocess", run)  # the name ptq161 calls
        monkeypatch.setattr(pre, "train_lora", train)
        monkeypatch.setattr(PTQ161, "quantize_layer", layer)


def stored_masks(qm):
    return {n: pre.mask_of(r.format) for n, r in qm.results.items()}


@pytest.fixture(scope="module")
def whole(tiny_llama_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "whole"
    mp = pytest.MonkeyPatch()
    spy = Spy(mp)
    try:
        qm = llmbin.quantize(str(tiny_llama_dir), recipe(text_file), out=out, verbose=False)
    finally:
        mp.undo()
    return qm, out, spy


def test_preprocessing_lowers_the_loss_it_trains_on(whole):
    qm, out, spy = whole
    record = next(r for r in qm.log.records if r.get("module") == "preprocess")
    assert record["loss_after"] < record["loss_before"] - 1e-3
    assert record["epoch_losses"][-1] < record["epoch_losses"][0]
    assert spy.lora_calls == 1 and "preprocess" in {r.get("module") for r in qm.log.records}
    assert not any(p.name.startswith(".") for p in out.iterdir())  # pass 1's work area is gone
    notes = " ".join(r["note"] for r in qm.log.records if "note" in r)
    assert "preprocess: LoRA r=64" in notes and "TFLOP" in notes  # the cost, said before training


def test_second_pass_keeps_the_first_pass_masks(whole):
    qm, _, spy = whole
    assert set(spy.masks) == set(qm.results)
    assert all(torch.equal(spy.masks[n], m) for n, m in stored_masks(qm).items())
    assert [i for fixed, i in spy.layer_calls if fixed] == [0, 1]  # pass 2 ran with the fixed masks
    assert len(spy.layer_calls) == 4


def test_pass1_trains_one_epoch_by_default_and_the_lora_takes_the_first_windows(tiny_llama_dir, text_file, tmp_path,
                                                                                 monkeypatch):
    spy = Spy(monkeypatch)
    llmbin.quantize(str(tiny_llama_dir), recipe(text_file, **{"preprocess.windows": 4}), out=tmp_path / "w",
                    verbose=False)
    assert spy.lora_windows == [4]  # of the 8 calibration windows
    assert spy.layer_epochs == [1, 1, 1, 1]  # pass 1 (pass1_epochs default 1), then pass 2 with the recipe's epochs


def test_second_pass_uses_exactly_the_masks_it_is_given(tiny_llama_dir, text_file, tmp_path, monkeypatch):
    """Masks moved by one channel after pass 1 come out as moved: pass 2 takes them, it does not recompute them."""
    spy = Spy(monkeypatch, alter_masks=lambda m: m.roll(1))
    qm = llmbin.quantize(str(tiny_llama_dir), recipe(text_file), out=tmp_path / "rolled", verbose=False)
    assert all(torch.equal(spy.masks[n], m) for n, m in stored_masks(qm).items())


def kill_then_resume(whole, model_dir, text_file, tmp_path, monkeypatch, interrupt: str, saved: str) -> "Spy":
    """Kill a run at `interrupt`, check `saved` survived in the work area, resume; the bytes must equal an
    uninterrupted run's. Returns the spy as it saw the resumed run."""
    _, reference, _ = whole
    spy = Spy(monkeypatch)
    setattr(spy, interrupt, True)
    with pytest.raises(KeyboardInterrupt):
        llmbin.quantize(str(model_dir), recipe(text_file), out=tmp_path / "cut", verbose=False)
    assert (tmp_path / ".cut.partial" / ".preprocess.partial" / saved).exists()
    setattr(spy, interrupt, False)
    spy.lora_calls, spy.layer_calls = 0, []
    llmbin.quantize(str(model_dir), recipe(text_file), out=tmp_path / "cut", resume=True, verbose=False)
    assert tensor_files(tmp_path / "cut") == tensor_files(reference)
    return spy


def test_resume_after_a_kill_during_preprocessing_is_byte_identical(whole, tiny_llama_dir, text_file, tmp_path,
                                                                    monkeypatch):
    spy = kill_then_resume(whole, tiny_llama_dir, text_file, tmp_path, monkeypatch, "interrupt_lora",
                           "layer-00001.safetensors")
    assert spy.layer_calls == [(True, 0), (True, 1)]  # pass 1 restored, not redone


def test_resume_after_a_kill_in_the_second_pass_reuses_the_trained_lora(whole, tiny_llama_dir, text_file, tmp_path,
                                                                        monkeypatch):
    spy = kill_then_resume(whole, tiny_llama_dir, text_file, tmp_path, monkeypatch, "interrupt_pass2", pre.LORA_FILE)
    assert spy.lora_calls == 0 and spy.layer_calls == [(True, 1)]


def test_bad_preprocess_settings_and_streaming_are_refused(tiny_llama_dir, text_file):
    with pytest.raises(LlmbinError, match="preprocess needs r"):
        recipe(text_file, **{"preprocess.r": 0}).params.check()
    streamed = recipe(text_file)
    streamed.pipeline.stream = True
    with pytest.raises(LlmbinError, match="pipeline.stream"):
        llmbin.quantize(str(tiny_llama_dir), streamed, verbose=False)
