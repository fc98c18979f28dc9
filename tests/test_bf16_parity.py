"""A model calibrated in bfloat16 and its packed checkpoint loaded in bfloat16 compute the same logits.

The fake-quant weights the pipeline propagates are the format's dequantized values cast to the model's dtype,
exactly what the reference (torch) backend computes from the stored tensors: equality is exact. The native CPU
kernel computes the same stored codes and scales without rounding the dense weight to bfloat16 (it accumulates
masked sums in float32), so it may differ from the bf16 dense product by the rounding of each weight to bf16
(relative 2^-9), which after the final bf16 rounding of the logits shows as a few units in the last place.
"""
import pytest
import torch
import transformers as tf

import llmbin  # noqa: F401
from conftest import save_packed
from llmbin.kernels import select_backend
from llmbin.methods import get_method
from llmbin.calibrate.pipeline import quantize_model
from llmbin.calibrate.quant_log import QuantLog
from llmbin.calibrate.options import PipelineOptions

METHODS = {"pbllm": {}, "ptq161": {"epochs": 1, "precision": "bf16"}, "dbllm": {}}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("src") / "tiny"
    tf.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_calibrated_equals_packed_bf16(method, source, tmp_path, monkeypatch):
    model = tf.AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).eval()  # as llmbin loads on CUDA
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    cls = get_method(method)
    results = quantize_model(model, cls(cls.params_cls(**METHODS[method])), ids, PipelineOptions(batch_size=2),
                             seed=0, log=QuantLog(verbose=False))
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        in_memory = model(ids).logits
    save_packed(model, results, tmp_path)

    monkeypatch.setenv("LLMBIN_BACKEND", "torch")
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, in_memory)

    monkeypatch.delenv("LLMBIN_BACKEND")
    meta = next(iter(results.values())).format.meta()
    native = select_backend(meta, torch.device("cpu"), torch.bfloat16)
    if native.name == "torch":
        return  # masked (PB-LLM) has no native kernel: the default is the exact path above
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    with torch.no_grad():
        out = reloaded(ids).logits.float()
    ulp = 2.0 ** -8 * in_memory.float().abs().max()
    assert (out - in_memory.float()).abs().max() <= 4 * ulp
