"""Load a model layer by layer from its safetensors files, for models larger than host memory.

The model is built on the meta device; everything outside the decoder layers (embeddings, final
norm, head, rotary tables) is loaded once, and each decoder layer is read from disk just before it
is quantized and dropped back to meta right after its packed tensors are written.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import LlmbinError
from .loading import check_causal_lm, load_config, resolve
from .walk import decoder_layers


def _weight_files(directory: Path) -> dict[str, Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return {k: directory / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    single = directory / "model.safetensors"
    if not single.exists():
        raise LlmbinError(f"streaming needs safetensors weights in {directory}; drop --set pipeline.stream=true")
    with safe_open(str(single), framework="pt") as f:
        return {k: single for k in f.keys()}


def _read(keys, files: dict[str, Path], dtype) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[str]] = {}
    for k in keys:
        by_file.setdefault(files[k], []).append(k)
    out = {}
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as f:
            for k in names:
                t = f.get_tensor(k)
                out[k] = t.to(dtype) if t.is_floating_point() else t
    return out


def _materialize(model, module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Real CPU storage for `module`, filled from `state`; non-persistent buffers recomputed by the model's init."""
    expected = set(module.state_dict().keys())
    missing = sorted(expected - set(state))
    if missing:
        raise LlmbinError(f"streaming {where}: checkpoint keys {', '.join(missing[:3])} not found (this architecture's "
                          "checkpoint layout needs conversion); drop --set pipeline.stream=true")
    module.to_empty(device="cpu")
    module.load_state_dict(state, strict=True)
    persistent = set(state)
    for name, sub in module.named_modules():
        own = [b for b, _ in sub.named_buffers(recurse=False)]
        if any(f"{name}.{b}".lstrip(".") not in persistent for b in own):
            model._init_weights(sub)


class StreamedModel:
    """Decoder layers load on demand (`load(i)`) and go back to meta (`release(i)`)."""

    def __init__(self, ref: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, kwargs = resolve(ref)
        if kwargs or not Path(source).is_dir():
            raise LlmbinError("streaming reads a local directory of safetensors (or a bundled model); "
                              "drop --set pipeline.stream=true for hub ids and .gguf files")
        self.directory = Path(source)
        config = load_config(ref, trust_remote_code)
        check_causal_lm(ref, config)
        self.dtype = dtype
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(self.directory, trust_remote_code=trust_remote_code)
        self.files = _weight_files(self.directory)
        self.prefix, self.layers = decoder_layers(self.model)
        base_keys = [k for k in self.model.state_dict() if not k.startswith(self.prefix + ".")]
        present = [k for k in base_keys if k in self.files]
        holder = _detach_layers(self.model, self.prefix)  # decoder layers stay on meta until load(i)
        state = _read(present, self.files, dtype)
        if getattr(config, "tie_word_embeddings", False):
            out_key = next((k for k in base_keys if k not in self.files), None)
            if out_key is not None:
                state[out_key] = None  # filled by tie_weights below
        _materialize_base(self.model, state)
        _reattach_layers(self.model, self.prefix, holder)

    def load(self, i: int) -> nn.Module:
        layer = self.layers[i]
        keys = [k for k in self.files if k.startswith(f"{self.prefix}.{i}.")]
        state = {k[len(f"{self.prefix}.{i}."):]: v for k, v in _read(keys, self.files, self.dtype).items()}
        _materialize(self.model, layer, state, f"{self.prefix}.{i}")
        return layer

    def release(self, i: int) -> None:
        self.layers[i].to("meta")


def _detach_layers(model, prefix: str) -> nn.ModuleList:
    parent_name, _, child = prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    layers = getattr(parent, child)
    setattr(parent, child, nn.ModuleList())
    return layers


def _reattach_layers(model, prefix: str, layers: nn.ModuleList) -> None:
    parent_name, _, child = prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, layers)


def _materialize_base(model, state: dict) -> None:
    tied = [k for k, v in state.items() if v is None]
    real = {k: v for k, v in state.items() if v is not None}
    model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(real, strict=False)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise LlmbinError(f"streaming: base weights do not match the checkpoint (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); drop --set pipeline.stream=true")
    model.tie_weights()
    persistent = set(model.state_dict())
    for name, sub in model.named_modules():
        if any(f"{name}.{b}".lstrip(".") not in persistent for b, _ in sub.named_buffers(recurse=False)):
            model._init_weights(sub)
