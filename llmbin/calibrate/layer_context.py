"""What a method sees of one decoder layer while quantizing it, and how linears are grouped by shared input."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import LlmbinError
from ..methods.base import QuantMethod, QuantResult
from ..methods.solvers.input_stats import InputStats
from ..methods.solvers.structured_feedback import hessian_error
from ..models.walk import layer_output
from .activation_cache import ActivationCache
from .quant_log import QuantLog


@dataclass
class LayerContext:
    """What a method sees of one decoder layer while quantizing it."""

    index: int
    prefix: str  # qualified name of the layer, e.g. "model.layers.3"
    layer: nn.Module
    linears: dict[str, nn.Linear]  # names relative to the layer
    groups: list[list[str]]  # linears sharing one input, in call order
    cache: ActivationCache
    device: torch.device
    generator: torch.Generator
    log: QuantLog
    true_sequential: bool = False
    sensitivity: bool = False  # measure each linear's relative output error (costs a K x K product per linear)
    results: dict[str, QuantResult] = field(default_factory=dict)

    def batches(self):
        """Cached inputs of this layer: (hidden, args, kwargs) on the compute device."""
        for i in range(len(self.cache)):
            hidden, args, kwargs = self.cache.get(i)
            yield hidden.to(self.device), args, kwargs

    @torch.no_grad()
    def forward(self, hidden, args, kwargs) -> torch.Tensor:
        return layer_output(self.layer(hidden, *args, **kwargs))

    @torch.no_grad()
    def collect_stats(self, names: list[str], want: frozenset) -> dict[str, InputStats]:
        """Run every cached batch through the layer and observe the inputs of `names` (one observer per group)."""
        handles, per_name = [], {}
        for group in self.groups:
            members = [n for n in group if n in names]
            if not members:
                continue
            stats = InputStats(self.linears[members[0]].in_features, set(want), self.device)
            handles.append(self.linears[members[0]].register_forward_hook(
                lambda _m, inp, _out, s=stats: s.update(inp[0])))
            per_name.update({n: stats for n in members})
        try:
            for hidden, args, kwargs in self.batches():
                self.forward(hidden, args, kwargs)
        finally:
            for h in handles:
                h.remove()
        return per_name

    def quantize_one(self, name: str, stats: InputStats, method: QuantMethod) -> QuantResult:
        linear = self.linears[name]
        weight = linear.weight.data.float().cpu()
        if not torch.isfinite(weight).all():
            raise LlmbinError(f"{self.prefix}.{name} has NaN or infinite weights; the model file is corrupted")
        start = time.perf_counter()
        if stats is not None and stats.tokens == 0:
            result = method.fallback_linear(name, weight)
            self.log.note(f"{self.prefix}.{name} saw no calibration tokens: {result.metrics.get('fallback', 'fallback')} used")
        else:
            result = method.quantize_linear(name, weight, stats, self.generator)
        self.apply(name, result)
        if self.sensitivity and stats is not None and stats.hessian is not None and stats.tokens:
            result.metrics["rel_output_error"] = round(
                hessian_error(weight, self.linears[name].weight.data, stats.hessian), 6)
        self.log.module(module=f"{self.prefix}.{name}", layer=self.index, format=result.format.name,
                        samples=0 if stats is None else stats.tokens, seconds=round(time.perf_counter() - start, 3),
                        **result.metrics)
        return result

    def apply(self, name: str, result: QuantResult) -> None:
        """Replace the linear's weight by the packed format's dequantized values (the fake-quant model)."""
        linear = self.linears[name]
        linear.weight.data = result.format.dequantize().to(device=linear.weight.device, dtype=linear.weight.dtype)
        self.results[name] = result


@torch.no_grad()
def input_sharing_groups(layer: nn.Module, linears: dict[str, nn.Linear], batch) -> list[list[str]]:
    """Group linears that read the same tensor (q/k/v, gate/up) by watching one forward pass."""
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def hook(name):
        def fn(_m, inp):
            x = inp[0]
            for tensor, names in seen:
                if tensor is x:
                    names.append(name)
                    return
            seen.append((x, [name]))  # holding x keeps its identity unique during the pass
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        hidden, args, kwargs = batch
        layer(hidden, *args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    groups = [names for _, names in seen]
    called = {n for g in groups for n in g}
    return groups + [[n] for n in linears if n not in called]  # experts no token reached in this batch
