"""PTQ1.61: structured mask, shared masks per input group, block training, packing, save/load."""
import math

import pytest
import torch
import torch.nn.functional as F
import transformers as tf

import llmbin  # noqa: F401  (registers the quantizer)
from llmbin import api
from llmbin.errors import LlmbinError
from llmbin.formats.bitplane import BitPlaneFormat
from llmbin.methods.solvers.block_training import (ChannelGather, FusedBlockLoss, StructuredBinaryLinear,
                                                   token_sq_norms, window_losses)
from llmbin.methods.solvers.salient_budget import all_in_bits, salient_count_for_budget
from llmbin.methods.solvers.structured_feedback import gptq_signs, hessian_error
from llmbin.methods.solvers.structured_mask import StructuredBinary, salient_channel_mask, salient_count
from llmbin.methods.solvers.input_stats import InputStats
from llmbin.recipe import Recipe

from conftest import tiny_llama


def test_mask_keeps_top_channels_by_statistic():
    g = torch.Generator().manual_seed(0)
    for k, ratio in ((576, 0.2), (1536, 0.2), (64, 0.2), (30, 0.1), (7, 0.5), (10, 0.0)):
        act = torch.rand(k, generator=g)
        mask = salient_channel_mask(act, ratio)
        assert int(mask.sum()) == salient_count(k, ratio) == math.ceil(round(ratio * k, 9))
        if 0 < mask.sum() < k:
            assert act[mask].min() > act[~mask].max()
    assert salient_count(576, 0.2) == 116 and salient_count(30, 0.1) == 3


def random_structured(n=24, k=40, ratio=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 + 0.01
    mask = salient_channel_mask(torch.rand(k, generator=g), ratio)
    return w, mask, StructuredBinary.init(w, mask), g


def test_initial_representation_follows_the_equations():
    w, mask, sb, _ = random_structured()
    dense = sb.dequantize()
    wb = w[:, ~mask]
    mu = wb.mean(1, keepdim=True)
    alpha = wb.abs().mean(1, keepdim=True)  # reference init: mean |w|, not mean |w - mu|
    torch.testing.assert_close(dense[:, ~mask], alpha * torch.where(wb >= mu, 1.0, -1.0) + mu)
    rows = w.max(1).values.clamp(min=0) - w.min(1).values.clamp(max=0)
    err = (dense[:, mask] - w[:, mask]).abs()
    assert (err <= rows[:, None] / 15 / 2 + 1e-6).all()  # 4-bit grid over the ENTIRE row's range
    assert sb.paper_bits() == pytest.approx((32 + 4 * 8) / 40)
    perm = sb.perm
    assert torch.equal(perm[:sb.k_bin], torch.nonzero(~mask).flatten())
    assert torch.equal(perm[sb.k_bin:], torch.nonzero(mask).flatten())


def test_packed_format_reproduces_trained_layer():
    w, mask, sb, g = random_structured()
    bias = torch.randn(w.shape[0], generator=g)
    module = StructuredBinaryLinear(sb, bias, ChannelGather(sb.perm, torch.float32))
    with torch.no_grad():  # stand-in for training: move every learnable scale
        for p in (module.alpha, module.r1, module.r2):
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
    trained = module.export().rounded()
    fmt = trained.to_format()
    packed = BitPlaneFormat.from_tensors(fmt.meta(), fmt.tensors())  # through the on-disk tensors
    fq = StructuredBinaryLinear(trained, bias, ChannelGather(sb.perm, torch.float32))
    x = torch.randn(7, w.shape[1], generator=g)
    with torch.no_grad():
        y = fq(x)
        y_trained = module(x)  # the module that was trained, its scales still in float32
    torch.testing.assert_close(F.linear(x, packed.dequantize(), bias), y, atol=1e-5, rtol=1e-5)
    # the packed layer against the trained module itself: every weight differs only by the float16 rounding of
    # its factors (A or C, r2, or the salient scale: relative 2^-11 each), so |difference| <= 2^-9 sum_j |w_j x_j|
    # (the scales move by 30%: a factor applied wrongly or not at all breaks this bound)
    bound = 2.0 ** -9 * F.linear(x.abs(), packed.dequantize().abs())
    packed_y = F.linear(x, packed.dequantize(), bias)
    assert ((packed_y - y_trained).abs() <= bound + 1e-6).all()
    assert not torch.equal(packed_y, y_trained)  # the float32 scales really were rounded
    torch.testing.assert_close(packed.masked_sum_matmul(x) + bias, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.dequantize(), trained.dequantize(), atol=1e-6, rtol=1e-6)
    # r1 is folded into the per-row A and C (KERNELS.md: it scales only the binary part), the order is a salient bitmap
    assert packed.out_scale is None and fmt.meta()["perm_storage"] == "salient_mask" and "perm" not in fmt.tensors()
    r1, alpha = module.r1.detach(), module.alpha.detach()
    assert torch.equal(packed.scales.flatten(), (2 * alpha * r1).half())
    assert torch.equal(packed.perm.long(), sb.perm)
    assert (packed.in_scale.float()[mask] == 1).all()
    assert packed.planes.shape[0] == 1 and packed.scales.shape == (1, w.shape[0], 1)  # one plane, one group per row


def test_window_losses_are_zero_at_the_target_and_positive_elsewhere():
    y = torch.randn(2, 5, 8)
    assert window_losses(y, y, y).abs().max() < 1e-6
    assert (window_losses(y + 0.1 * torch.randn_like(y), y, y) > 0).all()


def test_fused_loss_matches_the_plain_definition_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    y_fp = 3 * torch.randn(3, 7, 16, generator=g)
    y_fq = y_fp + 0.3 * torch.randn(3, 7, 16, generator=g)
    weights = torch.rand(3, generator=g)
    y_q = (y_fq + 0.5 * torch.randn(3, 7, 16, generator=g)).requires_grad_(True)
    y_fp[:, 0] *= 100  # an attention-sink token
    for relative in (False, True):
        plain = window_losses(y_q, y_fp, y_fq, relative)
        (g_plain,) = torch.autograd.grad((plain * weights).sum(), y_q)
        fused = FusedBlockLoss.apply(y_q, y_fp, y_fq, token_sq_norms(y_fp), token_sq_norms(y_fq), relative)
        (g_fused,) = torch.autograd.grad((fused * weights).sum(), y_q)
        torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g_fused, g_plain, atol=1e-6, rtol=1e-4)


TINY_BPW = 3.0  # the tiny model's 32..128-wide linears need ~2 bits all-in before any salient channel


@pytest.fixture(scope="module")
def quantized_tiny(tmp_path_factory, tokenizer, text_file):
    tmp = tmp_path_factory.mktemp("ptq161")
    tiny_llama().save_pretrained(tmp / "tiny")
    tokenizer.save_pretrained(tmp / "tiny")
    recipe = Recipe.create("ptq161", {"epochs": 2, "precision": "fp32", "bpw": TINY_BPW},
                           {"dataset": str(text_file), "nsamples": 8, "seqlen": 64, "seed": 0},
                           {"batch_size": 4})
    qm = api.quantize(str(tmp / "tiny"), recipe, out=tmp / "out", verbose=False)
    return qm, tmp / "out"


def test_input_groups_share_one_mask(quantized_tiny):
    qm, _ = quantized_tiny
    perms = {name: r.format.perm for name, r in qm.results.items()}
    for i in range(2):
        p = f"model.layers.{i}."
        for shared in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj")):
            assert all(torch.equal(perms[p + shared[0]], perms[p + s]) for s in shared[1:])
        assert not torch.equal(perms[p + "self_attn.q_proj"], perms[p + "mlp.gate_proj"])
    for p in ("model.layers.0.", "model.layers.1."):  # the budget picks per input group; every linear stays within
        for group in (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                      ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)):
            fmts = [qm.results[p + n].format for n in group]
            shapes = tuple((f.out_features, f.in_features) for f in fmts)
            assert {f.k_salient for f in fmts} == {salient_count_for_budget(shapes, TINY_BPW)}
            assert all(8 * f.stored_bytes() / (f.out_features * f.in_features) <= TINY_BPW for f in fmts)
    from llmbin.checkpoint.inspect import inspect_checkpoint, render

    shown = {r["module"]: r for r in inspect_checkpoint(quantized_tiny[1])["modules"]}
    assert all(shown[n]["salient_ratio"] == round(r.format.k_salient / r.format.in_features, 4) > 0
               for n, r in qm.results.items())
    assert "salient ratio" in render(inspect_checkpoint(quantized_tiny[1]))
    logged = {r["module"]: r for r in qm.log.records if "salient_ratio" in r}
    assert len(logged) == len(qm.results)
    assert all(logged[n]["salient_ratio"] == round(r.format.k_salient / r.format.in_features, 4)
               for n, r in qm.results.items())


def test_training_lowers_every_block_loss(quantized_tiny):
    qm, _ = quantized_tiny
    blocks = [r for r in qm.log.records if "block_loss_before" in r]
    assert len(blocks) == 2
    for r in blocks:
        assert r["block_loss_after"] < r["block_loss_before"]
        assert r["epoch_losses"][-1] < r["epoch_losses"][0]


def test_save_then_from_pretrained_gives_the_same_logits(quantized_tiny):
    qm, out = quantized_tiny
    ids = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(1))
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, qm.model(ids).logits, atol=1e-5, rtol=1e-5)
    bits = qm.model.config.quantization_config["bits"]
    assert 1.3 < bits["bpw_paper"] < 2.0 and bits["bpw_all_in"] <= TINY_BPW


def test_gptq_feedback_never_raises_the_hessian_weighted_error(quantized_tiny):
    qm, _ = quantized_tiny  # logged per linear on its calibration Hessian, before block training
    records = [r for r in qm.log.records if "herr_gptq" in r]
    assert len(records) == len(qm.results)
    assert all(r["herr_gptq"] <= r["herr_plain"] for r in records)
    assert sum(r["herr_gptq"] for r in records) < 0.9 * sum(r["herr_plain"] for r in records)


def correlated_hessian(k, seed, tokens=512):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g) @ (torch.eye(k) + 0.3 * torch.randn(k, k, generator=g))
    x[:, 3] *= 20  # an outlier channel, as real activations have
    stats = InputStats(k, {"hessian"}, torch.device("cpu"))
    stats.update(x)
    return stats


@pytest.mark.parametrize("grid", ["row", "salient"])
def test_gptq_signs_lower_the_error_and_keep_the_scales(grid):
    for seed, (n, k) in enumerate(((16, 48), (40, 96), (8, 200))):
        stats = correlated_hessian(k, seed)
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed + 10)) * 0.02
        plain = StructuredBinary.init(w, salient_channel_mask(stats.absmax, 0.2), "mean_abs", grid)
        fixed = gptq_signs(plain, w, stats.hessian, percdamp=0.01)
        assert hessian_error(w, fixed.dequantize(), stats.hessian) < hessian_error(w, plain.dequantize(), stats.hessian)
        for key in ("perm", "mu", "alpha", "r1", "r2", "salient_scale", "salient_zero"):
            assert torch.equal(getattr(fixed, key), getattr(plain, key)), key
        assert not torch.equal(fixed.signs, plain.signs)
        # a diagonal Hessian means no error can be fed forward: GPTQ is then exactly plain rounding
        diag = torch.diag(torch.diag(stats.hessian))
        same = gptq_signs(plain, w, diag, percdamp=0.01)
        assert torch.equal(same.signs, plain.signs) and torch.equal(same.salient_codes, plain.salient_codes)


def test_salient_grid_fits_the_salient_columns():
    w, mask, _, _ = random_structured(n=32, k=64)
    w[:, ~mask] *= 5  # the binarized columns widen the row's range
    errs = {}
    for grid in ("row", "salient"):
        sb = StructuredBinary.init(w, mask, "mean_abs", grid)
        errs[grid] = (sb.dequantize()[:, mask] - w[:, mask]).pow(2).sum()
        lo, hi = w[:, mask if grid == "salient" else slice(None)].aminmax(dim=1)
        step = (hi.clamp(min=0) - lo.clamp(max=0)) / 15
        torch.testing.assert_close(sb.salient_scale, step.half().float())
    assert errs["salient"] < errs["row"] / 3


@pytest.mark.parametrize("shapes", [((576, 576), (192, 576), (192, 576)), ((1536, 576), (1536, 576)), ((576, 1536),),
                                    ((256, 1024),), ((1024, 256),), ((100, 300), (37, 300))])
@pytest.mark.parametrize("bpw", [1.61, 1.65, 2.0])
def test_bit_budget_holds_with_the_formats_stored_bytes(shapes, bpw):
    k_sal = salient_count_for_budget(shapes, bpw)
    width = shapes[0][1]
    assert 0 <= k_sal < width and (k_sal > 0 or min(n for n, _ in shapes) < 64)  # narrow: nothing left to spend
    for n, k in shapes:  # what the format actually stores, not the formula
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(n))
        for count in (k_sal, k_sal + 1):
            fmt = StructuredBinary.init(w, salient_channel_mask(torch.arange(k).float(), None, count)).to_format()
            assert 8 * fmt.stored_bytes() / (n * k) == pytest.approx(all_in_bits(n, k, count), abs=1e-12)
        assert all_in_bits(n, k, k_sal) <= bpw
    for more in range(k_sal + 1, width):  # maximal: no larger count keeps every linear within the budget
        assert any(all_in_bits(n, width, more) > bpw for n, _ in shapes)
    assert all_in_bits(576, 576, salient_count(576, 0.175)) < all_in_bits(192, 576, salient_count(576, 0.175))


def test_bpw_below_the_smallest_layout_is_refused_and_ratio_wins():
    with pytest.raises(LlmbinError, match="bpw=1.65 is below the smallest layout"):
        salient_count_for_budget(((32, 64),), 1.65)
    method = Recipe.create("ptq161", {"salient_ratio": 0.2, "bpw": 1.2})
    from llmbin.methods.ptq161 import PTQ161
    mask = PTQ161(method.params).salient_mask(torch.rand(576), [(192, 576)])
    assert int(mask.sum()) == salient_count(576, 0.2)


def test_recipes_load():
    for name, preprocess in (("ptq161", True), ("ptq161-demo", False)):  # the full method; the light demo
        loaded = Recipe.load(name)
        assert loaded.method == "ptq161" and loaded.params.preprocess.enabled == preprocess
    with pytest.raises(LlmbinError, match="act_stat"):
        Recipe.create("ptq161", {"act_stat": "median"}).params.check()
