"""Every method option runs end to end on a tiny model and changes what is quantized (else it does nothing)."""
import pytest
import torch

from conftest import tiny_llama
from llmbin.methods import get_method
from llmbin.calibrate.pipeline import quantize_model
from llmbin.calibrate.quant_log import QuantLog
from llmbin.calibrate.options import PipelineOptions

OPTIONS = [
    ("ptq161", {"act_stat": "mean"}),
    ("ptq161", {"train_mu": True}),
    ("ptq161", {"alpha_init": "lsq"}),
    ("ptq161", {"lr_schedule": "cosine"}),
    ("ptq161", {"mse": "relative"}),
    ("pbllm", {"arb_iters": 3}),
    ("dbllm", {"act_order": True}),
]
BASE = {"ptq161": {"epochs": 2, "precision": "fp32", "bpw": 3.0}, "pbllm": {}, "dbllm": {}}


def calibration_ids() -> torch.Tensor:
    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1  # an attention-sink-like first token, where absolute and relative MSE disagree
    return ids


def quantize(method: str, params: dict) -> dict:
    model = tiny_llama(vocab_size=256, num_hidden_layers=1)
    cls = get_method(method)
    return quantize_model(model, cls(cls.params_cls(**{**BASE[method], **params})), calibration_ids(),
                          PipelineOptions(batch_size=2), seed=0, log=QuantLog(verbose=False))


def quantized_weights(method: str, params: dict) -> torch.Tensor:
    return torch.cat([r.format.dequantize().flatten() for _, r in sorted(quantize(method, params).items())])


@pytest.mark.parametrize("method,option", OPTIONS, ids=[f"{m}-{next(iter(o))}" for m, o in OPTIONS])
def test_option_changes_the_result(method, option):
    default = quantized_weights(method, {})
    changed = quantized_weights(method, option)
    assert torch.isfinite(changed).all()
    assert not torch.equal(changed, default), f"{method} {option} quantized exactly as the default"
    assert torch.equal(quantized_weights(method, option), changed)  # and is itself reproducible


@pytest.mark.parametrize("act_stat", ["max", "mean"])
def test_ptq161_salient_channels_are_the_top_ones_by_the_chosen_statistic(act_stat):
    """The stored salient mask of layer 0's q/k/v equals the top channels of max (or mean) |x| over the calibration
    tokens, computed here from the input the layer receives in an ordinary forward pass."""
    from llmbin.methods.ptq161_preprocess import mask_of

    results = quantize("ptq161", {"act_stat": act_stat})
    model = tiny_llama(vocab_size=256, num_hidden_layers=1)  # the same seed: the same float weights
    seen = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        model(calibration_ids())
    hook.remove()
    x = torch.cat(seen).reshape(-1, seen[0].shape[-1]).abs()
    stat = x.amax(0) if act_stat == "max" else x.mean(0)
    for name in ("q_proj", "k_proj", "v_proj"):
        stored = mask_of(results[f"model.layers.0.self_attn.{name}"].format)
        expected = torch.zeros_like(stored)
        expected[stat.topk(int(stored.sum())).indices] = True
        assert stored.any() and torch.equal(stored, expected), name


def test_arb_refinement_does_not_increase_the_binarization_error():
    """ARB-LLM's refinement moves each row's mu/alpha towards the least-squares fit of its binarized weights: the
    reconstruction error of the weights (measured here against the float ones) must not grow."""
    model = tiny_llama(vocab_size=256, num_hidden_layers=1)
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and n.startswith("model.layers.")}
    errors = {}
    for iters in (0, 3):
        results = quantize("pbllm", {"arb_iters": iters, "gptq": False})
        errors[iters] = sum(float((r.format.dequantize() - weights[n]).pow(2).sum()) for n, r in results.items())
    assert errors[3] <= errors[0]
