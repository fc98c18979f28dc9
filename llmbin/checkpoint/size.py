"""The whole checkpoint's size: what a user downloads, against the parameters it represents.

file bytes          every byte of the directory's *.safetensors files (headers included)
parameters          all parameters of the source model: out x in (+ bias) for each packed module,
                    the element count of every other stored tensor; a tied matrix counts once
bits per parameter  8 * file bytes / parameters
fp16 bytes          2 * parameters (the source at 16 bits); "x times smaller than fp16" = fp16 / file
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from .embeddings import packed_embedding_modules
from .validation import read_headers


def packed_modules(quant_config: dict) -> dict[str, dict]:
    """module name -> format meta of every packed module: decoder linears, embedding, head."""
    return {**quant_config.get("modules", {}), **packed_embedding_modules(quant_config.get("embeddings"))}


def model_size(path: str | Path, quant_config: dict) -> dict:
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    headers = read_headers(files)
    packed = packed_modules(quant_config)
    params = sum(m["out_features"] * m["in_features"] for m in packed.values())
    for name, (_, shape, _) in headers.items():
        module, _, tensor = name.rpartition(".")
        if module not in packed or tensor == "bias":
            params += math.prod(shape)
    file_bytes = sum(os.path.getsize(f) for f in files)
    return {"file_bytes": file_bytes, "parameters": params,
            "bits_per_parameter": round(8 * file_bytes / max(params, 1), 4), "fp16_bytes": 2 * params,
            "times_smaller_than_fp16": round(2 * params / max(file_bytes, 1), 2)}


def describe(size: dict) -> str:
    """'42.3 MB in files, 2.52 bits per parameter (134.5M parameters), 6.4 times smaller than fp16 (269.0 MB)'."""
    return (f"{size['file_bytes'] / 1e6:.1f} MB in files, {size['bits_per_parameter']:.2f} bits per parameter "
            f"({size['parameters'] / 1e6:.1f}M parameters), {size['times_smaller_than_fp16']:.1f} times smaller "
            f"than fp16 ({size['fp16_bytes'] / 1e6:.1f} MB)")
