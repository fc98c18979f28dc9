"""Sequential per-decoder-layer calibration.

The model's own call of every decoder layer (args, kwargs: its mask kind, its rotary table) is captured
for every calibration batch, with layer 0's input hidden states; then each decoder layer in turn is
moved to the compute device, its linears' input statistics are collected by hooks, the method
quantizes them (weights replaced by their dequantized packed values), and the QUANTIZED layer's
outputs, with the next layer's own call, become the next layer's inputs.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from tqdm.auto import tqdm

from ..formats import WrittenFormat
from ..host.memory import release_freed_memory
from ..methods.base import QuantMethod, QuantResult
from ..models.walk import capture_layer_calls, decoder_layers, find_linears, make_linears_explicit
from .activation_cache import ActivationCache
from .layer_context import LayerContext, input_sharing_groups
from .memory_estimate import check_budget, describe, estimate_memory
from .quant_log import QuantLog


def quantize_model(model: nn.Module, method: QuantMethod, calib_ids: torch.Tensor, options, seed: int,
                   log: QuantLog, work=None, stream=None, drop_written: bool = False) -> dict[str, QuantResult]:
    """Quantize every linear inside the decoder layers in place (fake-quant); -> {qualified name: result}.

    `work` (a WorkArea) receives each finished layer and supplies the finished layers of an
    interrupted run; `stream` (a StreamedModel) loads each layer from disk just in time. `drop_written`
    (streamed runs, the final pass): once a layer is in the work area its results keep only their description
    (formats.WrittenFormat), so memory does not grow with the layers done.
    """
    device = torch.device(options.device)
    prev_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _quantize_model(model, method, calib_ids, options, seed, log, device, work, stream, drop_written)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32


def _quantize_model(model, method, calib_ids, options, seed, log, device, work, stream, drop_written):
    drop_written = drop_written and work is not None  # only what the work area holds can be dropped
    prefix, layers = decoder_layers(model)
    hidden_size = model.get_input_embeddings().embedding_dim
    dtype = next(model.parameters()).dtype
    options = dataclasses.replace(options, stream=stream is not None)  # what this run does, whatever was asked
    est = estimate_memory(model, layers, *calib_ids.shape, torch.finfo(dtype).bits // 8, hidden_size, options,
                          drop_written=drop_written)
    log.note(describe(est, options, device))
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
                           options.true_sequential, options.sensitivity)
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
        if drop_written:
            for result in ctx.results.values():
                result.format = WrittenFormat.of(result.format)
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
