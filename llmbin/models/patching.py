"""Running modules' forwards through a wrapper for a while, and putting them back exactly as they were."""
from __future__ import annotations

from contextlib import contextmanager

import torch


class StopForward(Exception):
    """Raised inside a forward pass to end it once what was wanted has been seen (a hook or a wrapper catches it
    around the model call): the rest of the model, e.g. a vocabulary-sized head, never runs."""


@contextmanager
def wrapped_forwards(modules, wrap):
    """Inside the block module i's forward is wrap(i, its forward); afterwards every module has exactly the forward
    it had before, an instance-level one (accelerate's device hooks set one) included."""
    modules = list(modules)
    saved = [m.__dict__.get("forward") for m in modules]
    for i, module in enumerate(modules):
        module.forward = wrap(i, module.forward)
    try:
        yield
    finally:
        for module, forward in zip(modules, saved):
            if forward is None:
                module.__dict__.pop("forward", None)  # back to the class's forward
            else:
                module.forward = forward


@contextmanager
def checkpointed(layers):
    """Activation checkpointing of each layer while gradients are on: only its inputs are kept between forward and
    backward and its inside is recomputed (non-reentrant; the RNG state is restored, so dropout repeats its masks)."""
    from torch.utils.checkpoint import checkpoint

    def wrap(_index, inner):
        def forward(*args, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(inner, *args, use_reentrant=False, **kwargs)
            return inner(*args, **kwargs)
        return forward

    with wrapped_forwards(layers, wrap):
        yield


@contextmanager
def eager_attention_on_cpu(model, device):
    """While a whole model trains on a CPU, its attention runs eagerly (matmuls and a softmax; the model builds the
    matching causal mask): torch's fused CPU attention has a slow backward (SmolLM2, 512 tokens, bf16: 12
    distillation steps in 36.2 s with it, 26.1 s eager). Afterwards the model has its own implementation back."""
    before = model.config._attn_implementation
    switch = torch.device(device).type == "cpu" and before != "eager"
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)
