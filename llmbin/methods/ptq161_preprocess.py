"""PTQ1.61's quantization preprocessing, the stage before the pipeline's own pass (METHODS.md step 5):

1. pass 1: quantize the model with PTQ1.61 without preprocessing (the fake-quantized model, its masks),
   with `pass1_epochs` block-training epochs (default 1; 0: masks and GPTQ signs only);
2. train a LoRA on that fake-quantized model with a causal-LM loss on the first `windows` calibration windows
   (solvers/lora_preprocess.py) and merge it into the FULL-PRECISION weights;
3. the pipeline then quantizes the merged model again, every input group with pass 1's salient mask.

Resume: pass 1's layers go to their own work area inside the run's (`.preprocess.partial`), the trained
update to `lora.safetensors` there once training finished; a killed run restores both instead of redoing
them. The area is removed when pass 2 is complete (on_model_end), before the checkpoint is finalized.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import LlmbinError
from ..host.files import atomic_path
from ..models.walk import decoder_layers, make_linears_explicit
from .solvers.lora_preprocess import lora_cost, train_lora
from .solvers.training import compute_dtype

LORA_FILE = "lora.safetensors"


@dataclass
class LoRAPreprocess:
    """The paper's "quantization preprocessing": quantize, train a LoRA with a causal-LM loss, merge, quantize again."""

    enabled: bool = False
    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.1
    epochs: int = 1
    lr: float = 1e-3  # high for LoRA, because the protocol's 128 windows give few steps (64 at batch 2)
    batch_size: int = 2  # calibration windows per step
    windows: int = 64  # the LoRA trains on the first `windows` calibration windows (0: all of them)
    pass1_epochs: int = 1  # block-training epochs of pass 1 (its model only feeds the LoRA). SmolLM2 protocol v1:
    # 1 epoch starts the LoRA from a better model than 0 (321.70 -> 236.82 ppl for +6 min; benchmarks/results/ptq161.md)


def mask_of(fmt) -> torch.Tensor:
    """The salient-channel mask [K] a PTQ1.61 bitplane format stores (all False without salient channels)."""
    mask = torch.zeros(fmt.in_features, dtype=torch.bool)
    if fmt.k_salient:
        mask[fmt.perm[fmt.k_bin:].long()] = True
    return mask


def run_preprocess(method, model, ctx, work, quantize_pass):
    """-> (masks by qualified name, stats, pass 1's work area or None). Leaves the model full precision + LoRA."""
    if any(p.device.type == "meta" for p in model.parameters()):
        raise LlmbinError("ptq161 preprocess.enabled needs the whole model in memory, but pipeline.stream=true "
                          "streams it; drop --set pipeline.stream=true or --set preprocess.enabled=false")
    prefix, layers = decoder_layers(model)
    for layer in layers:
        make_linears_explicit(layer)  # as the pipeline does, so the names below are the ones it quantizes
    full_precision = {n: m.weight.data.detach().cpu().clone() for n, m in model.named_modules()
                      if isinstance(m, nn.Linear) and n.startswith(prefix + ".")}
    area = None if work is None else work.sub_area("preprocess")  # pass 1's layers, resumable on their own
    p = method.params.preprocess
    first = type(method)(replace(method.params, epochs=p.pass1_epochs, preprocess=LoRAPreprocess()))
    ctx.log.note("preprocess: pass 1, PTQ1.61 without preprocessing")
    results = quantize_pass(first, area)
    masks = {name: mask_of(r.format) for name, r in results.items()}
    names = sorted(results)
    windows = ctx.calib_windows[:p.windows] if p.windows else ctx.calib_windows
    lora_file = None if area is None else area.path / LORA_FILE
    if lora_file is not None and lora_file.exists():
        deltas, stats = _load(lora_file, names)
        ctx.log.note(f"preprocess: LoRA restored from {lora_file}")
    else:
        ctx.log.note(lora_cost(model, names, windows, p))
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
        dtype = compute_dtype(ctx.device, method.params.precision)
        deltas, stats = train_lora(model, names, windows, p, seed, ctx.device, dtype, ctx.log)
        if lora_file is not None:
            _save(lora_file, deltas, stats)
    ctx.log.module(module="preprocess", **stats)
    for name in names:  # merge into the full-precision weights (pass 1 left the fake-quantized ones)
        weight = model.get_submodule(name).weight
        weight.data = (full_precision[name].float() + deltas[name]).to(weight.device, weight.dtype)
    return masks, stats, area


def _save(path, deltas: dict, stats: dict) -> None:
    with atomic_path(path) as tmp:
        save_file({n: d.contiguous() for n, d in deltas.items()}, str(tmp), metadata={"stats": json.dumps(stats)})


def _load(path, names: list[str]):
    with safe_open(str(path), framework="pt") as f:
        if sorted(f.keys()) != names:
            raise LlmbinError(f"{path} does not match this run's linears; delete it to train the LoRA again")
        return {n: f.get_tensor(n) for n in names}, json.loads(f.metadata()["stats"])
