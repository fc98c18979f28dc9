"""Strict checks of a packed checkpoint: its quantization config, its shard names, every tensor header against the
declared module formats (before any tensor loads), and every loaded value a kernel would index with (before the
first product). Each failure is one LlmbinError naming the problem."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from safetensors import safe_open

from ..errors import LlmbinError
from ..formats import checked_format, format_from_meta
from ..nn import PackedMatrix
from .version import READABLE_VERSIONS

_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read_headers(files) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """tensor name -> (dtype name, shape, file). Truncated or corrupted shards raise LlmbinError."""
    found = {}
    for file in files:
        file = str(file)
        if not file.endswith(".safetensors"):
            raise LlmbinError(f"{file}: llmbin reads only .safetensors weights (nothing is unpickled)")
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    found[name] = (_DTYPES.get(sl.get_dtype(), sl.get_dtype()), tuple(sl.get_shape()), file)
        except Exception as exc:  # safetensors raises SafetensorError, OSError, ValueError
            raise LlmbinError(f"{Path(file).name} is truncated or corrupted ({str(exc).splitlines()[0][:120]}); "
                              "re-copy or re-export the checkpoint") from None
    return found


def validate_checkpoint_files(model, files, modules: dict) -> None:
    """Every packed tensor present with its declared dtype and shape; none unexpected under a packed module."""
    found = read_headers(files)
    for module, meta in modules.items():
        expected = format_from_meta(meta).expected_tensors(meta)
        for name, (dtype, shape) in expected.items():
            key = f"{module}.{name}"
            if key not in found:
                raise LlmbinError(f"checkpoint is missing packed tensor {key}; the files are incomplete, re-export them")
            got_dtype, got_shape, file = found[key]
            if got_shape != tuple(shape) or got_dtype != str(dtype).removeprefix("torch."):
                raise LlmbinError(f"packed tensor {key} in {Path(file).name} is {got_dtype} {got_shape}, the format "
                                  f"needs {str(dtype).removeprefix('torch.')} {tuple(shape)}; the checkpoint is corrupted")
        allowed = set(expected) | {"bias"}
        for key in found:
            if key.startswith(module + ".") and key[len(module) + 1:] not in allowed:
                raise LlmbinError(f"unexpected tensor {key} in the checkpoint for packed module {module}")
    state = model.state_dict()
    missing = sorted(k for k in state if k not in found and not _is_tied(model, k))
    if missing:
        raise LlmbinError(f"checkpoint is missing tensor(s) {', '.join(missing[:3])}"
                          f"{' ...' if len(missing) > 3 else ''}; the files are incomplete, re-export them")
    for key, tensor in state.items():  # the unquantized tensors: the model's shapes, a floating dtype where it has one
        if key not in found:
            continue
        got_dtype, got_shape, file = found[key]
        if got_shape != tuple(tensor.shape) or (tensor.is_floating_point() and got_dtype not in _FLOATS):
            raise LlmbinError(f"tensor {key} in {Path(file).name} is {got_dtype} {got_shape}, the model needs "
                              f"{str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}; the checkpoint is "
                              "corrupted or from another model")
    unknown = sorted(set(found) - set(state))
    if unknown:
        raise LlmbinError(f"checkpoint holds tensor(s) this model has no place for ({', '.join(unknown[:3])}"
                          f"{' ...' if len(unknown) > 3 else ''}); it is corrupted or from another model")


_FLOATS = ("float32", "float16", "bfloat16", "float64")


def _is_tied(model, key: str) -> bool:
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return key in tied


def existing_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule a checkpoint names, or one line saying the model has none of that name."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LlmbinError(f"the checkpoint names module {name!r}, which this model ({type(model).__name__}) does not "
                          "have; config.json is corrupted or from another model") from None


def check_shard_name(name, index: Path) -> str:
    """A shard the index names must be a plain file name in the checkpoint's directory: no path, no '..'."""
    if not isinstance(name, str) or not name.endswith(".safetensors") or Path(name).name != name or "\\" in name:
        raise LlmbinError(f"{index} names the shard {name!r}, which is not a .safetensors file in the checkpoint's "
                          "directory; the index is corrupted or was tampered with, re-copy the checkpoint")
    return name


def check_quant_config(qc: dict, where: str = "config.json") -> None:
    """The llmbin quantization_config: a readable version, and every module's metadata well-formed (so nothing
    later allocates a tensor of a corrupted size or trips over a missing key)."""
    version = qc.get("format_version")
    if version not in READABLE_VERSIONS:
        raise LlmbinError(f"llmbin checkpoint format version {version!r} is not supported by this llmbin (reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}); upgrade llmbin or re-quantize")
    modules = qc.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(k, str) and k for k in modules):
        raise LlmbinError(f"{where}: quantization_config.modules is not a mapping of module names; the checkpoint "
                          "is corrupted")
    for name, meta in modules.items():
        checked_format(meta, name)
    record = qc.get("embeddings")
    if record is None:
        return
    if not isinstance(record, dict):
        raise LlmbinError(f"{where}: quantization_config.embeddings is not a mapping; the checkpoint is corrupted")
    for role in ("input", "output"):
        entry = record.get(role)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("module"), str) or \
                (("meta" in entry) == ("tied_to" in entry)) or ("tied_to" in entry and not isinstance(entry["tied_to"], str)):
            raise LlmbinError(f"{where}: quantization_config.embeddings.{role} is malformed; the checkpoint is corrupted")
        if "meta" in entry:
            if format_from_meta(entry["meta"]).name != "uniform":
                raise LlmbinError(f"{where}: packed {role} embedding must use the uniform format; the checkpoint is "
                                  "corrupted")
            checked_format(entry["meta"], entry["module"])


def check_loaded_values(model) -> None:
    """After the weights load, before any kernel runs: every packed module's index tensors in range and its
    continuous tensors finite (format check_values), and every other floating tensor finite."""
    for name, module in model.named_modules():
        if isinstance(module, PackedMatrix):
            tensors = {n: b.detach().cpu() for n, b in module.named_buffers(recurse=False)}
            module.format_cls.check_values(module.meta, tensors, name or "module")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            if name.rpartition(".")[2] in ("inv_freq", "original_inv_freq"):
                continue
            raise LlmbinError(f"{name} holds NaN or infinite values; the checkpoint is corrupted, re-export it")
