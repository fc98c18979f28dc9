"""Uniform integer layout for RTN/GPTQ, format version 1.

    W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g],   g = k // G

`qweight` int32 [N, ceil(K / (32 // bits))]: floor(32 / bits) codes per word, LSB first
(3-bit codes use 30 bits of each word); `scales` fp16 [N, ceil(K / G)]; `zeros` uint8 [N, ceil(K / G)].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import MAX_DIM, FormatError, PackedFormat, check_tensors, meta_int, register_format
from .bits import pack_codes, unpack_codes

SUPPORTED_BITS = (2, 3, 4, 8)


@register_format
@dataclass
class UniformFormat(PackedFormat):
    name = "uniform"
    version = 1
    float_fields = {"scales": "scale"}  # the zero points are uint8 integers on disk: frozen like the codes

    codes: torch.Tensor  # int [N, K], values 0 .. 2^bits - 1
    scales: torch.Tensor  # fp16 [N, ng]
    zeros: torch.Tensor  # uint8 [N, ng]
    bits: int
    group_size: int  # columns per group; equals K for per-row

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1]

    @property
    def paper_bits(self) -> float:
        return float(self.bits)

    def meta(self) -> dict:
        return {"format": self.name, "version": self.version, "out_features": self.out_features,
                "in_features": self.in_features, "bits": self.bits, "group_size": self.group_size,
                "paper_bits": self.paper_bits}

    @classmethod
    def check_meta(cls, meta: dict, where: str = "module") -> None:
        super().check_meta(meta, where)
        meta_int(meta, "bits", where, 1, 8)
        meta_int(meta, "group_size", where, 1, MAX_DIM)

    @classmethod
    def check_values(cls, meta: dict, tensors: dict[str, torch.Tensor], where: str = "module") -> None:
        super().check_values(meta, tensors, where)
        zeros = tensors["zeros"]
        if zeros.numel() and int(zeros.max()) >= 2 ** meta["bits"]:
            raise FormatError(f"{where}.zeros holds zero points above the {meta['bits']}-bit code range; "
                              "the checkpoint is corrupted, re-export it")

    @classmethod
    def expected_tensors(cls, meta: dict) -> dict:
        n, k, bits, g = meta["out_features"], meta["in_features"], meta["bits"], meta["group_size"]
        ng = -(-k // g)
        return {"qweight": (torch.int32, (n, -(-k // (32 // bits)))),
                "scales": (torch.float16, (n, ng)), "zeros": (torch.uint8, (n, ng))}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qweight": pack_codes(self.codes, self.bits), "scales": self.scales.contiguous(),
                "zeros": self.zeros.contiguous()}

    @classmethod
    def from_tensors(cls, meta: dict, tensors: dict[str, torch.Tensor], where: str = "module") -> "UniformFormat":
        check_tensors(cls, meta, tensors, where)
        codes = unpack_codes(tensors["qweight"], meta["bits"], meta["in_features"])
        return cls(codes, tensors["scales"], tensors["zeros"], meta["bits"], meta["group_size"])

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        g, k = self.group_size, self.in_features
        scale = self.scales.to(dtype).repeat_interleave(g, dim=1)[:, :k]
        zero = self.zeros.to(dtype).repeat_interleave(g, dim=1)[:, :k]
        return (self.codes.to(dtype) - zero) * scale
