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
from llmbin.methods.solvers.structured_mask import StructuredBinary, salient_channel_mask, salient_count
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


@pytest.fixture(scope="module")
def quantized_tiny(tmp_path_factory, tokenizer, text_file):
    tmp = tmp_path_factory.mktemp("ptq161")
    tiny_llama().save_pretrained(tmp / "tiny")
    tokenizer.save_pretrained(tmp / "tiny")
    recipe = Recipe.create("ptq161", {"epochs": 2, "precision": "fp32"},
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
    for r in qm.results.values():
        k = r.format.in_features
        assert r.format.k_salient == salient_count(k, 0.2)


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
    assert bits["bpw_paper"] == pytest.approx(1.61, abs=0.02)


def test_preprocess_is_refused_clearly_and_recipes_load():
    recipe = Recipe.create("ptq161", {"preprocess.enabled": True})
    with pytest.raises(LlmbinError, match="not implemented"):
        api.quantize("unused", recipe)
    for name in ("ptq161", "ptq161-demo"):
        loaded = Recipe.load(name)
        assert loaded.method == "ptq161" and not loaded.params.preprocess.enabled
    with pytest.raises(LlmbinError, match="act_stat"):
        Recipe.create("ptq161", {"act_stat": "median"}).params.check()
