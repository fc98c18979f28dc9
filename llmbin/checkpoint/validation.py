"""Strict checks of packed checkpoint files against the declared module formats, before any tensor loads."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from ..errors import LlmbinError
from ..formats import format_from_meta

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
    missing = sorted(k for k in _loadable_keys(model) if k not in found and not _is_tied(model, k))
    if missing:
        raise LlmbinError(f"checkpoint is missing tensor(s) {', '.join(missing[:3])}"
                          f"{' ...' if len(missing) > 3 else ''}; the files are incomplete, re-export them")


def _loadable_keys(model):
    return [k for k in model.state_dict().keys()]


def _is_tied(model, key: str) -> bool:
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return key in tied
