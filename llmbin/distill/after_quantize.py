"""Distillation at the end of `quantize` (the recipe's `distill:` section): it trains the results' formats inside
the fake-quantized model in memory. Resumable state lives in the output's work area."""
from __future__ import annotations

from pathlib import Path

from ..errors import LlmbinError
from ..models.walk import set_submodule
from .memory_estimate import check_memory, describe, estimate_memory
from .options import DistillOptions
from .stage import Stage
from .teacher import cached_teacher_targets
from .work_files import STATE_FILE


def distill_quantized(model, results: dict, model_ref: str, tokenizer, dataset: str, options: DistillOptions,
                      device, log, state_dir: Path | None = None, memory_budget_mb: int = 0) -> dict:
    """Train the results' formats inside the fake-quant model; afterwards each linear's weight is its new format's
    dequantized value and each QuantResult holds the new format. -> the stage's statistics."""
    if any(p.device.type == "meta" for p in model.parameters()):
        raise LlmbinError("distill.enabled needs the whole quantized model in memory, but the layers were streamed "
                          "(pipeline.stream=true); drop --set pipeline.stream=true, or run `llmbin distill` on the "
                          "finished checkpoint")
    formats = {n: r.format for n, r in results.items()}
    teacher_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    est = estimate_memory(model, formats, options, teacher_bytes, device)
    log.note(describe(est))
    check_memory(est, memory_budget_mb)
    windows, cache = cached_teacher_targets(model_ref, tokenizer, dataset, options, device, log, state_dir)
    linears = {n: model.get_submodule(n) for n in results}
    state = None if state_dir is None else Path(state_dir) / STATE_FILE
    run = Stage(model, formats, windows, cache, options, device, log, state).run()
    for name, linear in linears.items():
        results[name].format = run.formats[name]
        linear.weight.data = run.formats[name].dequantize().to(dtype=linear.weight.dtype)
        set_submodule(model, name, linear.to(linear.weight.device))
    model.to("cpu")
    return run.stats
