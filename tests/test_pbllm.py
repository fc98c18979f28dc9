"""PB-LLM: saliency selection, binarizer variants, GPTQ feedback, packed forms, checkpoint round trip."""
from __future__ import annotations

import pytest
import torch

from llmbin.formats import BitPlaneFormat, format_from_meta
from llmbin.formats.masked import MaskedBinaryFormat
from llmbin.methods.pbllm import PBLLMParams, partial_binarize
from llmbin.methods.solvers.binarize import arb_refine, binarize, binary_levels, binary_mean_scale
from llmbin.methods.solvers.gptq_loop import hessian_diag_of_inverse_cholesky
from llmbin.methods.solvers.saliency import inverse_cholesky_diag, saliency_scores, top_fraction_mask


def correlated_problem(n=48, k=96, tokens=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * 0.3 + torch.eye(k)
    X = torch.randn(tokens, k, generator=g) @ mix * torch.linspace(0.2, 3, k)  # correlated, uneven channels
    X[:, 5] = 0  # a dead input channel
    W = torch.randn(n, k, generator=g) * 0.05
    W[torch.rand(n, k, generator=g) < 0.02] *= 8  # a few outliers
    return X, W, 2 * X.T @ X / tokens


def test_inverse_cholesky_diag_matches_shared_solver():
    _, _, H = correlated_problem()
    a, b = inverse_cholesky_diag(H, 0.01), hessian_diag_of_inverse_cholesky(H, 0.01)
    assert torch.allclose(a, b, rtol=1e-4)


@pytest.mark.parametrize("metric", ["hessian", "magnitude"])
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.0333])
def test_salient_mask_exact_count_by_metric(metric, ratio):
    _, W, H = correlated_problem()
    scores = saliency_scores(W, metric, H)
    mask = top_fraction_mask(scores, ratio)
    assert int(mask.sum()) == round(ratio * W.numel())
    assert scores[mask].min() >= scores[~mask].max()  # the top ones, globally (not per row)
    expected = W.abs() if metric == "magnitude" else W**2 / hessian_diag_of_inverse_cholesky(H, 0.01)[None] ** 2
    assert torch.allclose(scores, expected, rtol=1e-4)


def test_salient_mask_ties_are_deterministic():
    scores = torch.ones(10, 10)
    scores[3, 3] = 2
    mask = top_fraction_mask(scores, 0.05)
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[3, 3] = True
    expected.view(-1)[:4] = True  # lower flat index wins among ties
    assert torch.equal(mask, expected)


def test_binary_mean_scale_variants():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 40, generator=g)
    keep = torch.rand(6, 40, generator=g) > 0.25
    mu, alpha = binary_mean_scale(W, keep, "paper")
    for r in range(6):
        kept = W[r][keep[r]]
        assert torch.allclose(mu[r], kept.mean()) and torch.allclose(alpha[r], (kept - kept.mean()).abs().mean())
    mu, alpha = binary_mean_scale(W, keep, "code")
    zeroed = torch.where(keep, W, 0.0)
    assert torch.allclose(mu, zeroed.mean(1))
    assert torch.allclose(alpha, (zeroed - zeroed.mean(1, keepdim=True)).abs().mean(1))


def test_binarize_levels_are_alpha_sign_plus_mu_through_fp16():
    W = torch.randn(5, 30)
    mu, alpha = binary_mean_scale(W)
    A, C = binary_levels(mu, alpha)
    assert torch.equal(A, A.half().float()) and torch.equal(C, C.half().float())
    bits, values = binarize(W, A, C)
    reference = alpha[:, None] * torch.where(W >= mu[:, None], 1.0, -1.0) + mu[:, None]
    assert torch.allclose(values, reference, atol=2e-3)
    assert torch.equal(bits, values > C[:, None])


def test_arb_refine_never_worse():
    W = torch.randn(8, 64) ** 3  # skewed rows, where the plain mean is a poor centre
    keep = torch.rand(8, 64) > 0.1
    mu, alpha = binary_mean_scale(W, keep)

    def err(m, a):
        return ((a[:, None] * torch.where(W >= m[:, None], 1.0, -1.0) + m[:, None] - W) ** 2 * keep).sum(1)

    mu2, alpha2 = arb_refine(W, mu, alpha, keep, 15)
    assert (err(mu2, alpha2) <= err(mu, alpha) + 1e-5).all() and err(mu2, alpha2).sum() < err(mu, alpha).sum()


def test_gptq_feedback_lowers_output_error():
    X, W, H = correlated_problem()
    errors = {}
    for gptq in (True, False):
        _, Q, _ = partial_binarize(W, H, PBLLMParams(gptq=gptq, blocksize=32))
        errors[gptq] = (X @ W.T - X @ Q.T).norm()
    assert errors[True] < 0.92 * errors[False]  # 0.86 on this problem


@pytest.mark.parametrize("form", ["sparse", "bitmap"])
@pytest.mark.parametrize("variant", ["paper", "code"])
def test_packed_dequantize_equals_fake_quant(form, variant):
    _, W, H = correlated_problem(n=40, k=100)  # K neither a multiple of 32 nor of the block size
    p = PBLLMParams(salient_form=form, variant=variant, blocksize=64)
    fmt, Q, metrics = partial_binarize(W, H, p)
    assert isinstance(fmt, BitPlaneFormat if form == "sparse" else MaskedBinaryFormat) and metrics["form"] == form
    assert torch.equal(fmt.dequantize(), Q)
    meta = fmt.meta()
    loaded = format_from_meta(meta).from_tensors(meta, fmt.tensors())
    assert torch.equal(loaded.dequantize(), Q)
    assert metrics["salient"] == round(0.1 * W.numel()) and abs(metrics["bits_paper"] - 1.7) < 1e-3
    # salient weights sit on the 8-bit grid of their row, the others on the row's two binary levels
    mask = top_fraction_mask(saliency_scores(torch.where(torch.diag(H) == 0, 0.0, W), "hessian", H), 0.1)
    for r in range(0, 40, 7):
        assert Q[r][~mask[r]].unique().numel() <= 2
    # the salient values: codes of the 8-bit grid fitted on the full row (range including 0; scale through fp16)
    live = torch.where(torch.diag(H) == 0, 0.0, W)
    step = ((live.max(1).values.clamp(min=0) - live.min(1).values.clamp(max=0)) / 255).half().float()
    on_grid = Q / step[:, None]
    distance = (on_grid - on_grid.round()).abs()[mask]
    # bitmap stores the codes; sparse stores plane value + an fp16 correction (relative error 2^-11)
    assert distance.max() < (1e-4 if form == "bitmap" else 0.1), distance.max()
    assert (on_grid.round().abs()[mask] <= 255).all()
    if form == "bitmap":
        assert abs(fmt.all_in_bits() - metrics["bits_all_in"]) < 1e-3
        assert torch.equal(loaded.mask, mask)


def test_auto_form_picks_the_smaller_and_plain_rounding_path():
    _, W, H = correlated_problem()
    for ratio, form in ((0.1, "bitmap"), (0.01, "sparse")):
        fmt, Q, m = partial_binarize(W, H, PBLLMParams(salient_ratio=ratio))
        assert m["form"] == form and torch.equal(fmt.dequantize(), Q)
    fmt, Q, m = partial_binarize(W, None, PBLLMParams())  # the no-data fallback: magnitude, plain rounding
    assert torch.equal(fmt.dequantize(), Q) and "loss" not in m


def tiny_llama_dir(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llmbin.models.loading import bundled_path

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True)
    model_dir = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(bundled_path("smollm2-135m")).save_pretrained(model_dir)
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(f"The {i}th sentence says that packing bits is fun and fast." for i in range(400)))
    return model_dir, text


@pytest.mark.parametrize("form", ["auto", "sparse"])
def test_packed_checkpoint_logits_match_in_memory(tmp_path, form):
    import transformers

    import llmbin
    from llmbin.checkpoint.inspect import inspect_checkpoint
    from llmbin.recipe import Recipe

    model_dir, text = tiny_llama_dir(tmp_path)
    recipe = Recipe.create("pbllm", {"salient_form": form}, calibration={"dataset": str(text), "nsamples": 4,
                                                                        "seqlen": 64})
    out = tmp_path / "packed"
    qm = llmbin.api.quantize(str(model_dir), recipe, out=out, verbose=False)
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = qm.model(ids).logits
        loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
        got = loaded(ids).logits
    assert (got - expected).abs().max() < 1e-5
    forms = {r.metrics["form"] for r in qm.results.values()}
    assert forms == ({"bitmap"} if form == "auto" else {"sparse"})
    totals = inspect_checkpoint(out)["totals"]
    assert abs(totals["bpw_paper"] - 1.7) < 1e-2 and totals["bpw_all_in"] > 2.7
