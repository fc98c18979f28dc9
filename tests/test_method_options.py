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


def quantized_weights(method: str, params: dict) -> torch.Tensor:
    model = tiny_llama(vocab_size=256, num_hidden_layers=1)
    ids = torch.randint(0, 256, (4, 48), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1  # an attention-sink-like first token, where absolute and relative MSE disagree
    cls = get_method(method)
    results = quantize_model(model, cls(cls.params_cls(**{**BASE[method], **params})), ids,
                             PipelineOptions(batch_size=2), seed=0, log=QuantLog(verbose=False))
    return torch.cat([r.format.dequantize().flatten() for _, r in sorted(results.items())])


@pytest.mark.parametrize("method,option", OPTIONS, ids=[f"{m}-{next(iter(o))}" for m, o in OPTIONS])
def test_option_changes_the_result(method, option):
    default = quantized_weights(method, {})
    changed = quantized_weights(method, option)
    assert torch.isfinite(changed).all()
    assert not torch.equal(changed, default), f"{method} {option} quantized exactly as the default"
    assert torch.equal(quantized_weights(method, option), changed)  # and is itself reproducible
