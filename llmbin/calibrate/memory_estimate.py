"""The pre-flight estimate of a run's host memory, said before the first layer and checked against a budget.

What the layer-by-layer run holds at its peak, beside the process itself (interpreter, libraries, tokenizer: read
from /proc as the resident memory not held by the model's tensors):
- weights: the whole float model, or, streamed, everything outside the decoder layers plus one layer;
- activations: one layer's inputs and outputs for every calibration window (unless cached on disk);
- statistics: one float32 Hessian per linear of a layer (linears that share an input share one: an upper bound);
- solver: the widest linear's working copies (damped Hessian, its inverse Cholesky factor, weights, codes, errors);
- forward: one batch through one layer (every linear's output, the attention scores);
- results: the packed codes of every finished layer, kept until the checkpoint is written (~1 byte a weight; none in
  a streamed run, which keeps only their description once a layer is in the work area);
and, when larger, the embedding and head stage after the layers: the weights outside the layers, the codes, and the
largest of those matrices three times more in float32.
"""
from __future__ import annotations

from torch import nn

from ..errors import LlmbinError
from ..host.memory import process_rss_bytes, resident_tensor_bytes


def _linear_shapes(layer: nn.Module) -> list[tuple[int, int]]:
    """(out, in) of every linear of a layer (GPT-2's Conv1D stores its weight as [in, out])."""
    shapes = []
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            shapes.append((m.out_features, m.in_features))
        elif type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None and m.weight.dim() == 2:
            shapes.append((m.weight.shape[1], m.weight.shape[0]))
    return shapes


def estimate_memory(model: nn.Module, layers: nn.ModuleList, nsamples: int, seqlen: int, dtype_bytes: int,
                    hidden: int, options, drop_written: bool = False) -> dict:
    """Host bytes the run will hold: `host` (what the model and the run take) and `total` (with the process)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    layer_bytes = max(sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers)
    in_layers = sum(p.numel() * p.element_size() for p in layers.parameters())
    largest = max(layers, key=lambda layer: sum(p.numel() for p in layer.parameters()))
    shapes = _linear_shapes(largest) or [(hidden, hidden)]
    widest_in = max(k for _, k in shapes)
    weights = params - in_layers + layer_bytes if options.stream else params
    acts = 2 * nsamples * seqlen * hidden * dtype_bytes  # inputs + outputs of one layer
    stats = sum(k * k for _, k in shapes) * 4
    solver = 3 * widest_in ** 2 * 4 + 3 * max(n * k for n, k in shapes) * 4
    heads = getattr(getattr(model, "config", None), "num_attention_heads", 0) or 0
    batch = min(options.batch_size, nsamples)
    forward = batch * seqlen * (sum(n for n, _ in shapes) + 4 * hidden) * 4 + batch * heads * seqlen ** 2 * 4
    # ~1 byte of codes per weight, unless a streamed run drops them as each layer is written
    results = 0 if drop_written else sum(p.numel() for p in layers.parameters() if p.dim() >= 2)
    host = weights + (0 if options.activation_cache == "disk" else acts) + stats + solver + forward + results
    # after the layers: the embedding and head stage holds the weights outside the layers, the codes, and the
    # largest of those matrices three times more (float32 copy, rounded copy, codes and scales)
    inside = {id(p) for p in layers.parameters()}
    outside = [p for p in model.parameters() if p.dim() == 2 and id(p) not in inside]
    quantized_outside = options.embeddings != "none" or options.head not in ("none", "same")
    largest_outside = max((p.numel() * 4 for p in outside), default=0) if quantized_outside else 0
    embeddings_stage = params - in_layers + results + 3 * largest_outside
    process = max(0, process_rss_bytes() - resident_tensor_bytes(model))
    peak = max(host, embeddings_stage)
    return {"weights": weights, "activations": acts, "layer": layer_bytes, "statistics": stats, "solver": solver,
            "forward": forward, "results": results, "host": host, "embeddings_stage": embeddings_stage,
            "process": process, "total": peak + process}


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
    return (f"pre-flight memory: {fmt_gb(est['total'])} peak resident = process {fmt_gb(est['process'])} + the larger of "
            f"the layers' stage: weights "
            f"{fmt_gb(est['weights'])}{' (streamed)' if options.stream else ' (lower: --set pipeline.stream=true)'} + "
            f"activations {fmt_gb(est['activations'])} "
            f"{'on disk' if options.activation_cache == 'disk' else '(lower: --set pipeline.activation_cache=disk, --nsamples, --seqlen)'}"
            f" + statistics {fmt_gb(est['statistics'])} + solver {fmt_gb(est['solver'])} + one batch's forward "
            f"{fmt_gb(est['forward'])} + finished layers' codes {fmt_gb(est['results'])} (or, when larger, the embedding "
            f"and head stage: {fmt_gb(est['embeddings_stage'])}); on {device}: one layer {fmt_gb(est['layer'])}")
