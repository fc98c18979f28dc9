"""The pre-flight estimate of a run's host memory, said before the first layer and checked against a budget."""
from __future__ import annotations

from torch import nn

from ..errors import LlmbinError


def estimate_memory(model: nn.Module, layers: nn.ModuleList, nsamples: int, seqlen: int, dtype_bytes: int,
                    hidden: int, options) -> dict:
    """Host bytes the run will hold: weights (all, or base + one layer when streaming), activations, statistics."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    layer_bytes = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
    in_layers = sum(p.numel() * p.element_size() for p in layers.parameters())
    widest = max(max(p.shape) for layer in layers for p in layer.parameters() if p.dim() == 2)
    acts = 2 * nsamples * seqlen * hidden * dtype_bytes  # inputs + outputs of one layer
    weights = params - in_layers + layer_bytes if options.stream else params
    stats = 4 * widest * widest * 4
    host = weights + (0 if options.activation_cache == "disk" else acts) + stats
    return {"weights": weights, "activations": acts, "layer": layer_bytes, "statistics": stats, "host": host}


def check_budget(est: dict, options) -> None:
    budget = options.memory_budget_mb * 2**20
    if budget and est["host"] > budget:
        hints = [h for h, on in (("--set pipeline.stream=true (keeps one decoder layer in memory)", not options.stream),
                                 ("--set pipeline.activation_cache=disk", options.activation_cache != "disk"),
                                 ("lower --nsamples or --seqlen", True)) if on]
        raise LlmbinError(f"pre-flight estimate {fmt_gb(est['host'])} of host memory exceeds pipeline.memory_budget_mb="
                          f"{options.memory_budget_mb}; {' or '.join(hints)}")


def fmt_gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def describe(est: dict, options, device) -> str:
    return (f"pre-flight memory: {fmt_gb(est['host'])} host = weights {fmt_gb(est['weights'])}"
            f"{' (streamed)' if options.stream else ' (lower: --set pipeline.stream=true)'} + activations "
            f"{fmt_gb(est['activations'])} "
            f"{'on disk' if options.activation_cache == 'disk' else '(lower: --set pipeline.activation_cache=disk, --nsamples, --seqlen)'}"
            f" + statistics {fmt_gb(est['statistics'])}; on {device}: one layer {fmt_gb(est['layer'])}")
