"""`pipeline.stream: auto`: load the whole float model when it fits comfortably, else one decoder layer at a time.

Loading a model whole holds its float32 weights and, while they are copied out of the mapped file, close to as
much again (Qwen2.5-Coder-1.5B: 7.1 GB of weights, a 14.6 GB peak at its first layer). Streaming keeps the weights
outside the layers plus one layer, and costs only the head's GPTQ calibration (a streamed run rounds the packed head
to nearest). So auto streams when twice the float32 weights and a gigabyte for the process would pass the memory
available now, and the recipe has no stage that needs the whole model (PTQ1.61's LoRA preprocessing, distillation).
A choice other than loading a model that fits is said in one line.
"""
from __future__ import annotations

import torch

from ..calibrate.options import stream_setting
from ..host.memory import available_bytes


def float_weight_bytes(config, trust_remote_code: bool = False) -> int:
    """The model's weights as float32, counted on the meta device (nothing allocated; tied matrices once)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters()) * 4


def whole_model_stages(recipe) -> list[str]:
    """The recipe's stages that need every layer in memory at once."""
    stages = []
    preprocess = getattr(recipe.params, "preprocess", None)
    if preprocess is not None and getattr(preprocess, "enabled", False):
        stages.append("preprocess.enabled (PTQ1.61's LoRA)")
    if recipe.distill.enabled:
        stages.append("distill.enabled")
    return stages


def choose_stream(recipe, config, note, available: int | None = None, trust_remote_code: bool = False) -> bool:
    """Whether to stream the decoder layers; `note(msg)` says why when auto decides."""
    setting = stream_setting(recipe.pipeline.stream)
    if setting != "auto":
        return setting == "true"
    if recipe.pipeline.device != "cpu":
        return False  # the weights go to the accelerator layer by layer anyway
    available = available_bytes() if available is None else available
    if available is None:
        return False
    weights = float_weight_bytes(config, trust_remote_code)
    need = 2 * weights + 2**30
    if need <= available:
        return False
    gb = lambda n: f"{n / 2**30:.1f} GB"
    stages = whole_model_stages(recipe)
    if stages:
        note(f"pipeline.stream=auto: loading the whole model (float32 weights {gb(weights)}, ~{gb(need)} while "
             f"loading, {gb(available)} available) because {' and '.join(stages)} needs it; if it runs out of memory, set "
             f"{', '.join(s.split()[0] + '=false' for s in stages)} and --set pipeline.stream=true")
        return False
    note(f"pipeline.stream=auto: streaming the decoder layers one at a time (loading the whole model would take "
         f"~{gb(need)}, {gb(available)} is available; --set pipeline.stream=false loads it whole)")
    return True
