"""The pre-flight memory estimate's parts, against formulas written from the model's configuration."""
from __future__ import annotations

from llmbin.calibrate.memory_estimate import estimate_memory
from llmbin.calibrate.options import PipelineOptions
from llmbin.models.walk import decoder_layers

from conftest import tiny_llama


def test_parts_follow_the_configuration():
    h, inter, heads, kv, n_layers, vocab = 96, 224, 6, 2, 3, 1000
    model = tiny_llama(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_attention_heads=heads,
                       num_key_value_heads=kv, num_hidden_layers=n_layers)
    _, layers = decoder_layers(model)
    kvd = kv * h // heads
    per_layer = 2 * h * h + 2 * h * kvd + 3 * h * inter  # q, o; k, v; gate, up, down
    nsamples, seqlen, batch = 5, 32, 4
    for stream in (False, True):
        opts = PipelineOptions(stream=stream, batch_size=batch)
        est = estimate_memory(model, layers, nsamples, seqlen, 4, h, opts)
        assert est["statistics"] == (6 * h * h + inter * inter) * 4  # one Hessian per linear, by its input width
        assert est["solver"] == 3 * inter * inter * 4 + 3 * h * inter * 4
        assert est["activations"] == 2 * nsamples * seqlen * h * 4
        outs = 2 * h + 2 * kvd + 2 * inter + h
        assert est["forward"] == batch * seqlen * (outs + 4 * h) * 4 + batch * heads * seqlen * seqlen * 4
        assert est["results"] == n_layers * per_layer
        embeddings = sum(p.numel() for p in model.parameters()) - n_layers * per_layer - (2 * n_layers + 1) * h
        layer_bytes = (per_layer + 2 * h) * 4
        expected_weights = (embeddings + h) * 4 + layer_bytes if stream else sum(p.numel() for p in model.parameters()) * 4
        assert est["weights"] == expected_weights
        assert est["host"] == sum(est[k] for k in ("weights", "activations", "statistics", "solver", "forward", "results"))
        # after the layers: everything outside them, the codes, and the (tied) embedding three times in float32
        outside = (sum(p.numel() for p in model.parameters()) - n_layers * (per_layer + 2 * h)) * 4
        assert est["embeddings_stage"] == outside + est["results"] + 3 * vocab * h * 4
        assert est["total"] == max(est["host"], est["embeddings_stage"]) + est["process"] and est["process"] > 0
    none = estimate_memory(model, layers, nsamples, seqlen, 4, h, PipelineOptions(embeddings="none"))
    assert none["embeddings_stage"] == outside + none["results"]  # nothing outside the layers is quantized
