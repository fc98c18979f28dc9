"""Text the model writes itself (data/selfgen): seeded and cached, drawn from many openers, degenerate loops
refused; and mixed into calibration and distillation windows in the share a recipe asks for."""
from __future__ import annotations

import pytest
import torch

import llmbin
from conftest import tiny_llama
from llmbin.data import selfgen
from llmbin.recipe import Recipe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "selfgen"


def test_windows_are_seeded_cached_and_start_from_many_openers(tokenizer, cache, monkeypatch):
    model = tiny_llama(vocab_size=49152, seed=5)
    a = selfgen.generate_windows(model, tokenizer, 12, 24, seed=3, batch_size=2)
    assert a.shape == (12, 24) and a.dtype == torch.int64 and len(list(cache.glob("*.safetensors"))) == 1
    b = selfgen.generate_windows(model, tokenizer, 12, 24, seed=3, batch_size=2, cache=False)
    assert torch.equal(a, b)  # the same seed draws the same windows, cached or not
    c = selfgen.generate_windows(model, tokenizer, 12, 24, seed=4, batch_size=2, cache=False)
    assert not torch.equal(a, c)
    openers = {tuple(w[:3].tolist()) for w in a}
    assert len(openers) >= 3  # six batches, their openers drawn from 30: several differ
    monkeypatch.setattr(model, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("sampled again")))
    assert torch.equal(selfgen.generate_windows(model, tokenizer, 12, 24, seed=3, batch_size=2), a)  # from the cache


def test_degenerate_loops_are_not_fluent():
    loop = torch.tensor([5, 6, 7] * 20)
    prose = torch.arange(60)
    assert not selfgen._fluent(loop) and selfgen._fluent(prose)


def test_a_recipe_mixes_selfgen_windows_into_calibration(tiny_llama_dir, text_file, cache):
    recipe = Recipe.create("rtn", {"bits": 4}, calibration={"dataset": str(text_file), "nsamples": 6, "seqlen": 32,
                                                            "selfgen_share": 0.5})
    qm = llmbin.quantize(str(tiny_llama_dir), recipe, verbose=False)
    prov = qm.info["provenance"]
    assert prov["calibration"] == f"{text_file} + 3 selfgen windows" and prov["calibration_windows"] == [6, 32]
    with pytest.raises(llmbin.LlmbinError, match="selfgen_share must be in"):
        recipe.set("calibration.selfgen_share", 1.5)
        llmbin.quantize(str(tiny_llama_dir), recipe, verbose=False)


def test_distillation_mixes_windows_the_teacher_writes(tiny_llama_dir, text_file, cache):
    from llmbin.distill.data import mixed_windows, text_windows
    from llmbin.distill.options import DistillOptions
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = DistillOptions(nsamples=8, eval_nsamples=2, seqlen=32, selfgen_share=0.5)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = text_windows(str(text_file), tok, 8, 2, 32, 0)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    mixed = mixed_windows(text, teacher, tok, options)
    assert mixed.train.shape == (8, 32) and mixed.held_out.shape == (3, 32)
    assert torch.equal(mixed.train[:4], text.train[:4]) and torch.equal(mixed.held_out[:2], text.held_out)
    assert not any(torch.equal(row, t) for row in mixed.train[4:] for t in text.train)
    assert mixed.source.endswith("+ 50% selfgen")


def test_distillation_fills_what_the_text_lacks_with_windows_the_teacher_writes(tiny_llama_dir, text_file, cache):
    from llmbin.distill.data import filled_windows, text_windows
    from llmbin.distill.options import DistillOptions
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = text_windows(str(text_file), tok, 10_000, 2, 32, 0)  # asks far more than the file holds
    n_text = len(text.train)
    options = DistillOptions(nsamples=n_text + 6, eval_nsamples=2, seqlen=32, fill="selfgen")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    filled = filled_windows(text, teacher, tok, options)
    assert filled.train.shape == (n_text + 6, 32) and torch.equal(filled.train[:n_text], text.train)
    assert len(filled.held_out) == 2 + round(2 * 6 / n_text) and torch.equal(filled.held_out[:2], text.held_out)
    assert not any(torch.equal(row, t) for row in filled.train[n_text:] for t in text.train)
    assert filled.source.endswith("+ 6 selfgen windows") and filled.train_starts == text.train_starts
    enough = DistillOptions(nsamples=n_text, eval_nsamples=2, seqlen=32, fill="selfgen")
    assert filled_windows(text, teacher, tok, enough) is text  # nothing missing: nothing written
    with pytest.raises(llmbin.LlmbinError, match="distill.fill must be none or selfgen"):
        DistillOptions(fill="repeat")


def test_the_nucleus_head_is_the_sorted_distribution_where_it_holds_top_p():
    gen = torch.Generator().manual_seed(0)
    peaked = torch.softmax(torch.randn(4, 5000, generator=gen) * 6, -1)  # top-1024 holds >= 0.95 in every row
    flat = torch.softmax(torch.randn(4, 5000, generator=gen) * 0.1, -1)  # it does not: the full sort
    for probs in (peaked, flat):
        top, idx = selfgen._descending(probs)
        full, full_idx = probs.sort(-1, descending=True)
        assert torch.equal(top, full[:, :top.shape[1]]) and torch.equal(probs.gather(1, idx), top)
        nucleus = lambda t: (t.cumsum(-1) - t < selfgen.SETTINGS["top_p"]).sum(-1)
        assert torch.equal(nucleus(top), nucleus(full))
    assert selfgen._descending(peaked)[0].shape[1] == 1024 and selfgen._descending(flat)[0].shape[1] == 5000
