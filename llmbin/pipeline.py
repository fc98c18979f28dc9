"""Sequential per-decoder-layer calibration.

The model's own call of every decoder layer (args, kwargs: its mask kind, its rotary table) is captured
for every calibration batch, with layer 0's input hidden states; then each decoder layer in turn is
moved to the compute device, its linears' input statistics are collected by hooks, the method
quantizes them (weights replaced by their dequantized packed values), and the QUANTIZED layer's
outputs, with the next layer's own call, become the next layer's inputs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .activation_cache import ActivationCache
from .host_memory import release_freed_memory
from .methods.base import QuantMethod, QuantResult
from .models.walk import capture_layer_calls, decoder_layers, find_linears, layer_output, make_linears_explicit
from .stats import InputStats


class QuantLog:
    """One JSON line per module (loss, samples, seconds, peak memory) and a human line through tqdm."""

    def __init__(self, path=None, verbose: bool = True):
        self.records: list[dict] = []
        self.path = path
        self.verbose = verbose

    def module(self, **record) -> None:
        record["peak_rss_mb"] = round(peak_rss_mb(), 1)
        self.records.append(record)
        if self.verbose:
            extras = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                              if k not in ("module", "layer"))
            tqdm.write(f"  {record['module']}: {extras}")

    def note(self, message: str) -> None:
        self.records.append({"note": message})
        if self.verbose:
            tqdm.write(f"[llmbin] {message}")

    def jsonl(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.records)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
            from .errors import LlmbinError

            raise LlmbinError(f"{self.prefix}.{name} has NaN or infinite weights; the model file is corrupted")
        start = time.perf_counter()
        if stats is not None and stats.tokens == 0:
            result = method.fallback_linear(name, weight)
            self.log.note(f"{self.prefix}.{name} saw no calibration tokens: {result.metrics.get('fallback', 'fallback')} used")
        else:
            result = method.quantize_linear(name, weight, stats, self.generator)
        self.apply(name, result)
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
        from .errors import LlmbinError

        raise LlmbinError(f"pre-flight estimate {_fmt_gb(est['host'])} of host memory exceeds pipeline.memory_budget_mb="
                          f"{options.memory_budget_mb}; {' or '.join(hints)}")


def _fmt_gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB"


def quantize_model(model: nn.Module, method: QuantMethod, calib_ids: torch.Tensor, options, seed: int,
                   log: QuantLog, work=None, stream=None) -> dict[str, QuantResult]:
    """Quantize every linear inside the decoder layers in place (fake-quant); -> {qualified name: result}.

    `work` (a WorkArea) receives each finished layer and supplies the finished layers of an
    interrupted run; `stream` (a StreamedModel) loads each layer from disk just in time.
    """
    device = torch.device(options.device)
    prev_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _quantize_model(model, method, calib_ids, options, seed, log, device, work, stream)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32


def _quantize_model(model, method, calib_ids, options, seed, log, device, work, stream):
    prefix, layers = decoder_layers(model)
    hidden_size = model.get_input_embeddings().embedding_dim
    dtype = next(model.parameters()).dtype
    est = estimate_memory(model, layers, *calib_ids.shape, torch.finfo(dtype).bits // 8, hidden_size, options)
    log.note(f"pre-flight memory: {_fmt_gb(est['host'])} host = weights {_fmt_gb(est['weights'])}"
             f"{' (streamed)' if options.stream else ' (lower: --set pipeline.stream=true)'} + activations "
             f"{_fmt_gb(est['activations'])} {'on disk' if options.activation_cache == 'disk' else '(lower: --set pipeline.activation_cache=disk, --nsamples, --seqlen)'}"
             f" + statistics {_fmt_gb(est['statistics'])}; on {device}: one layer {_fmt_gb(est['layer'])}")
    check_budget(est, options)
    _move_outside_layers(model, layers, device)
    cache = ActivationCache(options.activation_cache)
    calls = []  # calls[batch][layer] = (args, kwargs) exactly as the model passes them to that layer
    for hidden, layer_calls in capture_layer_calls(model, layers, calib_ids.to(device), options.batch_size):
        cache.append((hidden, *layer_calls[0]))
        calls.append(layer_calls)
    results: dict[str, QuantResult] = {}
    skip = list(options.skip)
    bar = tqdm(range(len(layers)), desc="quantizing layers", unit="layer")
    for i in bar:
        if stream is not None:
            stream.load(i)
        make_linears_explicit(layers[i])
        layer = layers[i].to(device)
        linears = {n: m for n, m in find_linears(layer).items() if not any(s in f"{prefix}.{i}.{n}" for s in skip)}
        generator = torch.Generator().manual_seed(seed * 100003 + i)
        first = cache.get(0)
        groups = input_sharing_groups(layer, linears, (first[0].to(device), first[1], first[2]))
        ctx = LayerContext(i, f"{prefix}.{i}", layer, linears, groups, cache, device, generator, log,
                           options.true_sequential)
        if work is not None and i in work.finished:
            method.on_layer_skipped(ctx)  # before the saved weights replace the full-precision ones
            for name, result in work.load_layer(i, ctx.prefix).items():
                ctx.apply(name, result)
            log.note(f"layer {i}: restored from {work.path}")
        else:
            method.quantize_layer(ctx)
            if work is not None:
                work.save_layer(i, ctx.prefix, layer, ctx.results)
        missing = set(linears) - set(ctx.results)
        if missing:
            raise RuntimeError(f"method {method.name} left {sorted(missing)} of layer {i} unquantized")
        next_cache = ActivationCache(options.activation_cache)
        for b, (hidden, args, kwargs) in enumerate(ctx.batches()):
            next_call = calls[b][i + 1] if i + 1 < len(layers) else ((), {})
            next_cache.append((ctx.forward(hidden, args, kwargs).cpu(), *next_call))
        cache.close()
        cache = next_cache
        results.update({f"{prefix}.{i}.{n}": r for n, r in ctx.results.items()})
        layers[i] = layer.cpu()
        if stream is not None:
            stream.release(i)
        release_freed_memory()  # this layer's temporaries, before the next layer allocates its own
    cache.close()
    if stream is None:
        model.to("cpu")
    return results


def _move_outside_layers(model: nn.Module, layers: nn.ModuleList, device: torch.device) -> None:
    """Embeddings, rotary tables and the like go to the compute device; decoder layers stay on the host."""
    if device.type == "cpu":
        return
    inside = {id(t) for t in list(layers.parameters()) + list(layers.buffers())}
    for module in model.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if id(tensor) not in inside:
                tensor.data = tensor.data.to(device)
