"""The stage after the decoder layers: token embeddings and output head calibrated and stored as packed integers.

`pipeline.embeddings` (intB, intB-gG, intB-row for B = 2..8, or none) sets the input embedding, and
`pipeline.head` (same | intB... | none) the output head of an untied model. The layout is `uniform`
(per-row or grouped fp16 scales, uint8 zero points). The head is a QuantLinear calibrated like any
linear: GPTQ with the Hessian of its input, the final hidden states of the QUANTIZED model, collected
by a forward pre-hook on the head during one pass over the first `pipeline.head_windows` calibration
windows (the pass stops at the head, so the vocabulary-sized product is never computed; a streamed
model has no such pass and its head is rounded to nearest, logged). The input embedding of an untied
model is rounded to nearest (a lookup has no input statistics). A tied matrix is quantized once, with
the head's Hessian (on SmolLM2 that more than halves the perplexity cost of plain rounding,
benchmarks/results/size.md), and serves both: QuantEmbedding for lookups, TiedQuantHead for logits.

The checkpoint's quantization_config records the stage as
    "embeddings": {"setting": {...}, "tied": bool,
                   "input":  {"module": name, "meta": uniform meta} | null,
                   "output": {"module": name, "meta": uniform meta} | {"module": name, "tied_to": name} | null}
"""
from __future__ import annotations

import re
import time

import torch
from torch import nn

from ..errors import LlmbinError
from ..formats import UniformFormat
from ..methods.rtn import rtn_format
from ..methods.solvers.gptq_loop import gptq_quantize
from ..methods.solvers.input_stats import InputStats
from ..methods.solvers.uniform_quantizer import UniformColumnQuantizer
from ..models.patching import StopForward
from ..models.walk import set_submodule
from ..nn import QuantEmbedding, QuantLinear, TiedQuantHead, lookup_scale, untie_packed

# default scale group per code width: 6-8 bit codes carry the precision with one scale per row
DEFAULT_GROUP = {8: -1, 7: -1, 6: -1, 5: 64, 4: 64, 3: 64, 2: 32}
_SETTING = re.compile(r"^int(\d)(?:-(row|g\d+))?$")


def parse_setting(text: str, key: str) -> tuple[int, int] | None:
    """'none' -> None; 'int4' -> (4, 64); 'int4-g32' -> (4, 32); 'int8-row' -> (8, -1)."""
    text = str(text).strip().lower()
    if text == "none":
        return None
    m = _SETTING.match(text)
    if not m or int(m.group(1)) not in DEFAULT_GROUP:
        raise LlmbinError(f"{key}={text!r} is not a setting; use none or int2 .. int8, optionally with "
                          "-row (one scale per row) or -gN (one per N columns), e.g. int4-g32")
    bits = int(m.group(1))
    group = DEFAULT_GROUP[bits] if m.group(2) is None else (-1 if m.group(2) == "row" else int(m.group(2)[1:]))
    if group == 0:
        raise LlmbinError(f"{key}={text!r}: the group size must be positive")
    return bits, group


def check_options(options) -> None:
    parse_setting(options.embeddings, "pipeline.embeddings")
    if options.head != "same":
        parse_setting(options.head, "pipeline.head")
    if options.head_windows < 1:
        raise LlmbinError(f"pipeline.head_windows must be >= 1, not {options.head_windows}")


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def is_tied(model: nn.Module) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    w_in, w_out = getattr(inp, "weight", None), getattr(out, "weight", None)
    return w_in is not None and w_out is not None and w_in.data_ptr() == w_out.data_ptr() and w_in.shape == w_out.shape


@torch.no_grad()
def head_input_stats(model: nn.Module, windows: torch.Tensor, batch_size: int) -> InputStats:
    """Statistics (Hessian) of the output head's input over `windows`: one forward pass stopped at the head."""
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    stats = InputStats(head.in_features, {"hessian"}, device)

    def hook(_module, args):
        stats.update(args[0])
        raise StopForward

    handle = head.register_forward_pre_hook(hook)
    try:
        for batch in windows.split(max(batch_size, 1)):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except StopForward:
                pass
    finally:
        handle.remove()
    return stats


def quantize_matrix(weight: torch.Tensor, bits: int, group: int,
                    stats: InputStats | None) -> tuple[UniformFormat, dict]:
    """GPTQ with the given input statistics, plain rounding without them."""
    weight = weight.detach().float().cpu()
    if stats is None:
        return rtn_format(weight, bits, group), {"calibration": "rtn"}
    quantizer = UniformColumnQuantizer(*weight.shape, bits, group)
    _, loss = gptq_quantize(weight, stats.hessian.cpu(), quantizer)
    return quantizer.to_format(), {"calibration": "gptq", "loss": loss, "samples": stats.tokens}


def quantize_embeddings(model: nn.Module, options, windows: torch.Tensor, log, streamed: bool = False) -> dict:
    """Replace the embedding and/or head by packed modules (in place); -> the config record (module docstring)."""
    check_options(options)
    emb = parse_setting(options.embeddings, "pipeline.embeddings")
    tied = is_tied(model)
    if tied and options.head not in ("same", options.embeddings):
        raise LlmbinError(f"this model ties its output head to its input embeddings, so one matrix serves both; "
                          f"set only pipeline.embeddings (pipeline.head={options.head!r} cannot differ)")
    head = emb if options.head == "same" else parse_setting(options.head, "pipeline.head")
    record = {"setting": {"embeddings": options.embeddings, "head": options.head}, "tied": tied,
              "input": None, "output": None}
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or getattr(out, "weight", None) is None:
        head, out = None, None
    if emb is None and head is None:
        return record
    stats = None
    if head is not None:
        if streamed:
            log.note("the output head is rounded to nearest, not calibrated: a streamed model has no full pass "
                     "(drop pipeline.stream to calibrate it with GPTQ)")
        else:
            start = time.perf_counter()
            stats = head_input_stats(model, windows[: options.head_windows], options.batch_size)
            log.note(f"output head: input statistics from {stats.tokens} tokens in {time.perf_counter() - start:.1f} s")
    dtype = inp.weight.dtype
    in_name = _name_of(model, inp)
    scale = lookup_scale(inp)
    if emb is not None and scale is None:
        log.note(f"{in_name} ({type(inp).__name__}) has its own forward; it stays in float"
                 + (" and so does the head tied to it" if tied else ""))
        record["kept_float"] = f"{in_name}: {type(inp).__name__} has its own forward"
        if tied:
            return record
        emb = None
    if tied:
        start = time.perf_counter()
        fmt, metrics = quantize_matrix(inp.weight, *emb, stats)
        packed = QuantEmbedding.from_format(fmt, getattr(inp, "padding_idx", None), dtype, scale, lut=True)
        packed = packed.to(inp.weight.device)
        out_name = _name_of(model, out)
        set_submodule(model, in_name, packed)
        set_submodule(model, out_name, TiedQuantHead(packed))
        record["input"] = {"module": in_name, "meta": packed.meta}
        record["output"] = {"module": out_name, "tied_to": in_name}
        untie_packed(model)
        log.module(module=f"{in_name} (= {out_name})", format=fmt.name, bits=fmt.bits, group_size=fmt.group_size,
                   seconds=round(time.perf_counter() - start, 3), **metrics)
        return record
    if emb is not None:
        start = time.perf_counter()
        fmt, metrics = quantize_matrix(inp.weight, *emb, None)
        packed = QuantEmbedding.from_format(fmt, getattr(inp, "padding_idx", None), dtype, scale, lut=True)
        set_submodule(model, in_name, packed.to(inp.weight.device))
        record["input"] = {"module": in_name, "meta": packed.meta}
        log.module(module=in_name, format=fmt.name, bits=fmt.bits, group_size=fmt.group_size,
                   seconds=round(time.perf_counter() - start, 3), **metrics)
    if head is not None:
        start = time.perf_counter()
        out_name = _name_of(model, out)
        fmt, metrics = quantize_matrix(out.weight, *head, stats)
        bias = out.bias.detach() if getattr(out, "bias", None) is not None else None
        head_module = QuantLinear.from_format(fmt, bias)
        head_module.meta["lut"] = True  # the head runs on the cpu lookup-table kernel (kernels/cpu)
        set_submodule(model, out_name, head_module.to(out.weight.device))
        record["output"] = {"module": out_name, "meta": head_module.meta}
        log.module(module=out_name, format=fmt.name, bits=fmt.bits, group_size=fmt.group_size,
                   seconds=round(time.perf_counter() - start, 3), **metrics)
    return record
