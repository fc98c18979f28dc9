"""QuantMethod protocol and registry.

A method is a small object with lifecycle hooks the pipeline calls:
    quantize_layer(ctx)        one decoder layer; the default collects statistics per group of
                               linears that share an input and calls quantize_linear for each
    quantize_linear(...)       one weight -> QuantResult (a packed format + metrics)
    on_model_end(model, ctx)   model-level stages after every layer (e.g. distillation)
Parameters are a dataclass (`params_cls`) so recipes and `--set` are validated by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import LlmbinError
from ..formats import PackedFormat

METHODS: dict[str, type["QuantMethod"]] = {}


def register_method(cls):
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["QuantMethod"]:
    if name not in METHODS:
        raise LlmbinError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))} (see `llmbin methods`)")
    return METHODS[name]


@dataclass
class QuantResult:
    format: PackedFormat
    metrics: dict = field(default_factory=dict)  # e.g. {"loss": ...}; logged to quant_log.jsonl


class QuantMethod:
    name: ClassVar[str]
    summary: ClassVar[str]
    params_cls: ClassVar[type]
    stats: ClassVar[frozenset] = frozenset({"hessian"})  # what the observers collect

    def __init__(self, params):
        self.params = params

    def quantize_linear(self, name: str, weight: torch.Tensor, stats, generator: torch.Generator) -> QuantResult:
        raise LlmbinError(f"method {self.name} does not quantize single linears")

    def fallback_linear(self, name: str, weight: torch.Tensor) -> QuantResult:
        """Used for a linear that saw no calibration tokens (an unused MoE expert): plain rounding."""
        raise LlmbinError(f"{name} saw no calibration tokens and method {self.name} has no data-free fallback; "
                          "use more calibration samples")

    def quantize_layer(self, ctx) -> None:
        """True-sequential: statistics per group after the earlier groups are quantized; else one pass."""
        stats = None if ctx.true_sequential else ctx.collect_stats(list(ctx.linears), self.stats)
        for group in ctx.groups:
            if ctx.true_sequential:
                stats = ctx.collect_stats(group, self.stats)
            for name in group:
                ctx.quantize_one(name, stats[name], self)

    def prepare_model(self, model, ctx, work, quantize_pass) -> None:
        """A stage before the layer-by-layer pass (PTQ1.61's preprocessing). `quantize_pass(method, work_area)`
        runs the pipeline over the model with another method instance and returns its results."""

    def on_layer_skipped(self, ctx) -> None:
        """A resumed run restores this layer from the work area instead of quantizing it."""

    def on_model_end(self, model, ctx) -> bool:
        """Model-level stage after all layers; return True when it changed any result."""
        return False
