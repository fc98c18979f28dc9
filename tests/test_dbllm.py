"""DB-LLM: dual-binarization levels, nearest assignment, guarded refits, mirror init, packing, checkpoint round trip
with the (generic) distillation stage; the stage itself is tested in test_distill.py."""
from __future__ import annotations

import pytest
import torch

from llmbin.formats import BitPlaneFormat
from llmbin.methods.solvers.dual_binarize import (DualBinaryColumnQuantizer, assign, fit_dual, group_error,
                                                  init_scales, levels_of, refit_scales)
from llmbin.methods.solvers.gptq_loop import gptq_quantize


def heavy_tailed(n=32, g=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, g, generator=gen) * 0.03
    w[torch.rand(n, g, generator=gen) < 0.03] *= 6
    w[: n // 4] = -w[: n // 4]  # rows whose largest weight is negative
    return w


def four_levels(a1, a2):
    return torch.stack([torch.zeros_like(a1), a2, a1, a1 + a2], 1)  # codes 00, 01, 10, 11


def test_initial_levels_are_symmetric_two_bit_grid():
    w = heavy_tailed()
    a1, a2 = init_scales(w)
    s = (w.abs().amax(1) / 2).half().float()
    assert torch.equal(a1, 2 * s) and torch.equal(a2, -s)
    assert torch.equal(a1, a1.half().float()) and torch.equal(a2, a2.half().float())
    levels = four_levels(a1, a2).sort(1).values
    assert torch.equal(levels, torch.stack([-s, torch.zeros_like(s), s, 2 * s], 1))
    m1, m2 = init_scales(w, negative=True)  # the mirrored grid {-2s, -s, 0, s}
    assert torch.equal(m1, -a1) and torch.equal(m2, -a2)


@pytest.mark.parametrize("weighted", [False, True])
def test_mirror_init_never_increases_error_versus_positive_grid(weighted):
    for seed in range(4):
        w = heavy_tailed(n=64, seed=seed)  # a quarter of the rows have their largest weight negative
        cw = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(seed)) * 3 + 0.01 if weighted else None
        for iters in (0, 1, 5):
            positive = group_error(w, *fit_dual(w, iters, cw, mirror=False), cw)
            mirrored = group_error(w, *fit_dual(w, iters, cw, mirror=True), cw)
            assert torch.all(mirrored <= positive)  # per (row, group)
            assert (mirrored < positive).sum() >= 8  # and it does pick the mirrored grid where that is better
        # with no refit, the negative-side rows are the ones helped: the lone 2s level belongs on their side
        flip = -w.amin(1) > w.amax(1)
        gain = group_error(w, *fit_dual(w, 0, cw), cw) - group_error(w, *fit_dual(w, 0, cw, mirror=True), cw)
        assert gain[flip].mean() > gain[~flip].mean()


@pytest.mark.parametrize("scales", ["init", "random"])
def test_assignment_is_nearest_level(scales):
    w = heavy_tailed(seed=1)
    if scales == "init":
        a1, a2 = init_scales(w)
    else:  # a refit may leave any order of levels (a2 > 0, a1 < 0, |a2| > a1)
        gen = torch.Generator().manual_seed(2)
        a1, a2 = (torch.randn(len(w), generator=gen) * 0.05).half().float(), (torch.randn(len(w), generator=gen) * 0.05).half().float()
    b1, b2 = assign(w, a1, a2)
    chosen = (w - levels_of(b1, b2, a1, a2)).abs()
    best = (w.unsqueeze(-1) - four_levels(a1, a2).unsqueeze(1)).abs().min(-1).values
    assert torch.all(chosen <= best + 1e-7)
    if scales == "init":  # the spec's midpoint thresholds: b1 = H(w - (a1+a2)/2), b2 = H(-(w - a1 b1 - a2/2))
        a1c, a2c = a1[:, None], a2[:, None]
        spec_b1 = w - (a1c + a2c) / 2 > 0
        spec_b2 = -(w - a1c * spec_b1 - a2c / 2) > 0
        assert torch.equal(b1, spec_b1) and torch.equal(b2, spec_b2)


@pytest.mark.parametrize("weighted", [False, True])
def test_refit_never_raises_group_error(weighted):
    for seed in range(6):
        w = heavy_tailed(n=64, seed=seed)
        cw = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(seed)) * 3 + 0.01 if weighted else None
        errors = [group_error(w, *fit_dual(w, iters, cw), cw) for iters in range(6)]
        for before, after in zip(errors, errors[1:]):
            assert torch.all(after <= before)  # per (row, group)
        assert errors[-1].sum() < 0.9 * errors[0].sum()  # and the refit does help overall
        # one raw least-squares step (before float16 rounding) is optimal for its planes
        a1, a2 = init_scales(w)
        b1, b2 = assign(w, a1, a2)
        n1, n2 = refit_scales(w, b1, b2, a1, a2, cw)
        h = torch.ones(w.shape[1]) if cw is None else cw
        fixed = lambda x1, x2: ((w - levels_of(b1, b2, x1, x2)) ** 2 * h).sum(1)  # noqa: E731
        assert torch.all(fixed(n1, n2) <= fixed(a1, a2) * (1 + 1e-3) + 1e-9)


def hessian_problem(n=40, k=200, tokens=1500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, k, generator=gen) @ (torch.randn(k, k, generator=gen) * 0.2 + torch.eye(k))
    X[:, 7] = 0  # dead channel
    return torch.randn(n, k, generator=gen) * 0.02, 2 * X.T @ X / tokens, X


def test_packed_planes_and_scales_reproduce_fake_quant_exactly():
    W, H, X = hessian_problem()  # K = 200: the last group is partial, the planes pad to 7 words
    quantizer = DualBinaryColumnQuantizer(*W.shape, 64, 3, torch.diag(H))
    Q, _ = gptq_quantize(W, H, quantizer, blocksize=48)
    fmt = quantizer.to_format()
    assert fmt.planes.shape == (2, 40, 200) and fmt.scales.shape == (2, 40, 4) and fmt.scales.dtype == torch.float16
    assert fmt.offsets is None and fmt.group_size == 64 and fmt.paper_bits == 2.0
    assert torch.equal(fmt.dequantize(), Q)
    reloaded = BitPlaneFormat.from_tensors(fmt.meta(), fmt.tensors())
    assert torch.equal(reloaded.dequantize(), Q)
    x = torch.randn(3, 200)
    assert torch.allclose(reloaded.masked_sum_matmul(x), x @ Q.T, atol=1e-5)
    assert DualBinaryColumnQuantizer(64, 576).to_format().all_in_bits() == 2.5
    # GPTQ feedback beats plain per-group dual binarization on the layer output
    plain = DualBinaryColumnQuantizer(*W.shape, 64, 3).quantize_all(W)
    assert ((Q - W) @ X.T).pow(2).sum() < ((plain - W) @ X.T).pow(2).sum()


def test_checkpoint_round_trip_matches_in_memory_logits(tiny_llama_dir, text_file, tmp_path):
    import llmbin
    from llmbin.checkpoint.inspect import inspect_checkpoint
    from llmbin.recipe import Recipe

    # the recipe's distill: section trains the scales after the last layer, so the layers written during
    # quantization must be rewritten with the trained scales
    recipe = Recipe.create("dbllm", {}, calibration={"dataset": str(text_file), "nsamples": 4, "seqlen": 32},
                           distill={"enabled": True, "nsamples": 6, "eval_nsamples": 2, "seqlen": 32,
                                    "batch_size": 2, "epochs": 3, "lr": 0.02, "eval_every": 3})
    out = tmp_path / "packed"
    qm = llmbin.quantize(str(tiny_llama_dir), recipe, out=out, verbose=False)
    assert any("(kept)" in r.get("note", "") for r in qm.log.records)
    ids = torch.randint(0, 49152, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = qm.model(input_ids=ids).logits
    model, _ = llmbin.load(out)
    for name, result in qm.results.items():  # the trained scales reached the disk
        assert torch.equal(model.get_submodule(name).packed_format().scales, result.format.scales)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert (got - expected).abs().max() < 1e-5
    report = inspect_checkpoint(out)
    assert report["totals"]["bpw_paper"] == 2.0 and report["totals"]["bpw_all_in"] == 2.5
    card = (out / "README.md").read_text()
    assert "1 + gamma * H_t / log V" in card and "dual binarization" in card
    assert llmbin.checkpoint.read_quant_config(out)["distill"]["tensors"] == ["bitplane.scales"]


def test_legacy_params_distill_reaches_the_distill_section():
    from llmbin.recipe import Recipe

    r = Recipe.from_dict({"method": "dbllm", "params": {"distill": {"enabled": True, "nsamples": 7}, "refit_iters": 2}})
    assert r.distill.enabled and r.distill.nsamples == 7 and r.params.refit_iters == 2
    r = Recipe.create("dbllm", {"distill.enabled": True})
    assert r.distill.enabled and "distill" not in r.to_dict()["params"]


def test_selfgen_distillation_runs_data_free(tiny_llama_dir, text_file):
    import llmbin
    from llmbin.recipe import Recipe

    recipe = Recipe.create("dbllm", {"refit_iters": 1}, calibration={"dataset": str(text_file), "nsamples": 2, "seqlen": 16},
                           distill={"enabled": True, "data": "selfgen", "nsamples": 2, "eval_nsamples": 1, "seqlen": 8})
    qm = llmbin.quantize(str(tiny_llama_dir), recipe, verbose=False)
    notes = [r["note"] for r in qm.log.records if "note" in r]
    assert any("distill: held-out loss" in n for n in notes)
    for name, result in qm.results.items():
        assert torch.equal(qm.model.get_submodule(name).weight.data, result.format.dequantize())
