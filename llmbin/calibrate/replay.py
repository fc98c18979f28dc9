"""Replay check: the layer-by-layer pipeline, with quantization disabled, must reproduce the model's own forward.

Every method calibrates a decoder layer on inputs the pipeline replays (layer 0's captured hidden states, then
each layer's outputs, each with that layer's own call). If the replay differs from what the model computes, every
Hessian and training target downstream is wrong. This runs the real pipeline loop with a method that quantizes
nothing and compares each layer's replayed output, and the logits computed from the last one, with the model's
own forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..methods.base import QuantMethod
from ..models.walk import decoder_layers, layer_output
from .options import PipelineOptions
from .pipeline import quantize_model
from .quant_log import QuantLog


@dataclass
class _NoParams:
    pass


class _ObserveOnly(QuantMethod):
    """Quantizes nothing; records what the pipeline computes for each layer on its replayed inputs."""

    name = "replay-observer"
    summary = "internal: no quantization"
    params_cls = _NoParams

    def __init__(self):
        super().__init__(_NoParams())
        self.outputs: list[torch.Tensor] = []

    def quantize_layer(self, ctx) -> None:
        self.outputs.append(torch.cat([ctx.forward(h, a, k).float().cpu() for h, a, k in ctx.batches()]))


@torch.no_grad()
def replay_check(model, input_ids: torch.Tensor, batch_size: int = 1, device: str = "cpu") -> dict:
    """-> {"layers": [max |replay - model| per layer], "logits": max |difference|, "max_abs": float}.

    The model's own outputs are read with forward hooks on each decoder layer during one ordinary forward.
    Logits from the replay: the same forward with the last layer's output replaced by the replayed one.
    """
    _, layers = decoder_layers(model)
    reference: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = [layer.register_forward_hook(lambda _m, _i, out, i=i: reference[i].append(layer_output(out).float()))
               for i, layer in enumerate(layers)]
    try:
        logits = torch.cat([model(input_ids=input_ids[s:s + batch_size], use_cache=False).logits.float()
                            for s in range(0, len(input_ids), batch_size)])
    finally:
        for h in handles:
            h.remove()
    observer = _ObserveOnly()
    options = PipelineOptions(batch_size=batch_size, device=device, skip=("",))  # "" matches every linear
    quantize_model(model, observer, input_ids, options, seed=0, log=QuantLog(verbose=False))
    layer_err = [(torch.cat(ref).cpu() - got).abs().max().item() for ref, got in zip(reference, observer.outputs)]
    replayed = observer.outputs[-1]
    chunks = iter(replayed.split(batch_size))
    hook = layers[-1].register_forward_hook(lambda _m, _i, out: _replace_hidden(out, next(chunks)))
    try:
        replay_logits = torch.cat([model(input_ids=input_ids[s:s + batch_size], use_cache=False).logits.float()
                                   for s in range(0, len(input_ids), batch_size)])
    finally:
        hook.remove()
    logit_err = (replay_logits - logits).abs().max().item()
    return {"layers": layer_err, "logits": logit_err, "max_abs": max(layer_err + [logit_err])}


def _replace_hidden(out, hidden: torch.Tensor):
    hidden = hidden.to(layer_output(out).dtype)
    return (hidden, *out[1:]) if isinstance(out, (tuple, list)) else hidden
