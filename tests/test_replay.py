"""Models with several layer types (sliding-window and global attention, different rotary bases): every layer is
calibrated on exactly the call the model gives it, and the replay reproduces the model's own forward."""
import pytest
import torch
import transformers as tf

import llmbin  # noqa: F401  (registers the quantizer)
from conftest import save_packed
from llmbin.methods import get_method
from llmbin.models.walk import capture_layer_calls, decoder_layers, layer_output
from llmbin.calibrate.pipeline import quantize_model
from llmbin.calibrate.quant_log import QuantLog
from llmbin.calibrate.options import PipelineOptions
from llmbin.calibrate.replay import replay_check

H = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
         vocab_size=256, max_position_embeddings=128)
WINDOW, SEQ = 8, 32  # the sliding window is shorter than the test sequence
MIXED = {
    # sliding, sliding, full, sliding, sliding, full; local and global rotary bases differ
    "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**H, head_dim=16, sliding_window=WINDOW,
                                                               sliding_window_pattern=3)),
    "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**H, head_dim=16, sliding_window=WINDOW)),
    # full attention on layers 0-2, sliding window on 3-5
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**H, use_sliding_window=True, sliding_window=WINDOW,
                                                        max_window_layers=3)),
    "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**H, sliding_window=WINDOW)),
}


def build(arch):
    torch.manual_seed(0)
    return MIXED[arch]().eval()


def ids(batch=4, seed=0):
    return torch.randint(0, 256, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", sorted(MIXED))
def test_replay_reproduces_the_model(arch):
    model = build(arch)
    kinds = getattr(model.config, "layer_types", None)
    if arch == "mistral":
        assert model.config.sliding_window == WINDOW < SEQ
    else:  # both kinds present, at least two global layers
        assert set(kinds) == {"sliding_attention", "full_attention"} and kinds.count("full_attention") >= 2, kinds
    report = replay_check(model, ids(), batch_size=2)
    assert len(report["layers"]) == 6
    assert report["max_abs"] <= 1e-5, report


@torch.no_grad()
def test_layer_types_really_differ():
    """Negative control: giving a global layer the call of layer 0 (sliding, local rotary base) changes its output,
    so the replay check above could fail."""
    model = build("gemma3")
    _, layers = decoder_layers(model)
    [(hidden, calls)] = capture_layer_calls(model, layers, ids(2), batch_size=2)
    assert model.config.layer_types[0] == "sliding_attention" and model.config.layer_types[2] == "full_attention"
    args, own = calls[2]
    own_out = layer_output(layers[2](hidden, *args, **own))
    wrong_out = layer_output(layers[2](hidden, *calls[0][0], **calls[0][1]))
    assert (own_out - wrong_out).abs().max() > 1e-2


@pytest.mark.parametrize("arch", sorted(MIXED))
def test_quantize_save_reload_mixed_layers(arch, tmp_path):
    model = build(arch)
    x = ids()
    method = get_method("gptq")(get_method("gptq").params_cls(bits=4, group_size=32))
    results = quantize_model(model, method, x, PipelineOptions(batch_size=2), seed=0, log=QuantLog(verbose=False))
    with torch.no_grad():
        in_memory = model(x).logits
    save_packed(model, results, tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, in_memory, atol=1e-5, rtol=1e-5)


def test_replay_check_command(tmp_path):
    from click.testing import CliRunner

    from llmbin.cli import main

    model_dir = tmp_path / "gemma3"
    build("gemma3").save_pretrained(model_dir)
    result = CliRunner().invoke(main, ["replay-check", str(model_dir), "--nsamples", "2", "--seqlen", "32"])
    assert result.exit_code == 0, result.output
    assert "layer   5:" in result.output and "ok: replay equals" in result.output
