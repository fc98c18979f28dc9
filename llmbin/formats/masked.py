"""Partial binarization with a salient bitmap (PB-LLM's compact form), format version 1.

    W[n, k] = (q[n, j(n,k)] - zero[n]) * scale[n]    where mask[n, k]  (j: rank of k among row n's salient)
    W[n, k] = A[n] * B[n, k] + C[n]                  elsewhere

Tensors: `planes` int32 [1, N, ceil(K/32)] and `scales` fp16 [1, N, 1] / `offsets` fp16 [N, 1] laid out
exactly like a one-plane, one-group `bitplane` (a plane kernel reads them unchanged; plane bits under
the mask are zero); `mask` int32 [N, ceil(K/32)] (same bit order as the planes); `salient_q` int32
[ceil(nnz / floor(32/bits))]: the salient codes in row-major mask order, packed like `uniform`'s qweight;
`salient_scale` fp16 [N]; `salient_zero` uint8 [N]; `salient_rowptr` int32 [N + 1] (start of each
row's codes: lets a kernel jump to a row without a popcount pass; 32 bits per row).
Per weight this costs 2 bits + bits * salient share, against 1 + 32 * salient share for the sparse
CSR correction of `bitplane`: smaller whenever more than ~1/(31 - bits) of the weights are salient.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (FormatError, PackedFormat, check_padding_zero, check_row_pointers, check_tensors, meta_int,
                   register_format)
from .bits import pack_codes, unpack_codes

SCALE_DTYPE = torch.float16


def _words(k: int, per: int) -> int:
    return -(-k // per)


@register_format
@dataclass
class MaskedBinaryFormat(PackedFormat):
    name = "masked"
    version = 1
    float_fields = {"scales": "scale", "offsets": "shift", "salient_scale": "scale"}  # salient_zero: uint8, frozen

    planes: torch.Tensor  # bool [N, K]: sign bits (False under the mask)
    scales: torch.Tensor  # fp16 [N]: A = 2 alpha
    offsets: torch.Tensor  # fp16 [N]: C = mu - alpha
    mask: torch.Tensor  # bool [N, K]: salient positions
    salient_codes: torch.Tensor  # int [nnz], row-major order of the mask
    salient_scale: torch.Tensor  # fp16 [N]
    salient_zero: torch.Tensor  # uint8 [N]
    salient_bits: int
    paper_bits: float

    @property
    def out_features(self) -> int:
        return self.planes.shape[0]

    @property
    def in_features(self) -> int:
        return self.planes.shape[1]

    @property
    def nnz(self) -> int:
        return int(self.salient_codes.numel())

    # -- storage -------------------------------------------------------------------------
    def meta(self) -> dict:
        return {"format": self.name, "version": self.version, "out_features": self.out_features,
                "in_features": self.in_features, "num_planes": 1, "group_size": self.in_features,
                "salient_bits": self.salient_bits, "salient_nnz": self.nnz, "salient_form": "bitmap",
                "paper_bits": self.paper_bits}

    @classmethod
    def check_meta(cls, meta: dict, where: str = "module") -> None:
        super().check_meta(meta, where)
        meta_int(meta, "salient_bits", where, 1, 8)
        meta_int(meta, "salient_nnz", where, 0, meta["out_features"] * meta["in_features"])

    @classmethod
    def check_values(cls, meta: dict, tensors: dict[str, torch.Tensor], where: str = "module") -> None:
        super().check_values(meta, tensors, where)
        k, nnz = meta["in_features"], meta["salient_nnz"]
        check_padding_zero(tensors["mask"], k, f"{where}.mask")
        check_row_pointers(tensors["salient_rowptr"], nnz, f"{where}.salient_rowptr")
        mask = unpack_codes(tensors["mask"], 1, k).bool()
        if int(mask.sum()) != nnz or not torch.equal(tensors["salient_rowptr"][1:].long(), torch.cumsum(mask.sum(1), 0)):
            raise FormatError(f"{where}: the salient mask does not match salient_nnz/salient_rowptr; "
                              "the checkpoint is corrupted")
        zero = tensors["salient_zero"]
        if zero.numel() and int(zero.max()) >= 2 ** meta["salient_bits"]:
            raise FormatError(f"{where}.salient_zero holds values above the {meta['salient_bits']}-bit range; "
                              "the checkpoint is corrupted")

    @classmethod
    def expected_tensors(cls, meta: dict) -> dict:
        n, k, bits, nnz = meta["out_features"], meta["in_features"], meta["salient_bits"], meta["salient_nnz"]
        return {"planes": (torch.int32, (1, n, _words(k, 32))), "scales": (SCALE_DTYPE, (1, n, 1)),
                "offsets": (SCALE_DTYPE, (n, 1)), "mask": (torch.int32, (n, _words(k, 32))),
                "salient_q": (torch.int32, (_words(nnz, 32 // bits),)), "salient_scale": (SCALE_DTYPE, (n,)),
                "salient_zero": (torch.uint8, (n,)), "salient_rowptr": (torch.int32, (n + 1,))}

    def tensors(self) -> dict[str, torch.Tensor]:
        rowptr = torch.zeros(self.out_features + 1, dtype=torch.int32)
        rowptr[1:] = torch.cumsum(self.mask.sum(1), 0).to(torch.int32)
        t = {"planes": pack_codes(self.planes & ~self.mask, 1)[None], "scales": self.scales.reshape(1, -1, 1),
             "offsets": self.offsets.reshape(-1, 1), "mask": pack_codes(self.mask, 1),
             "salient_q": pack_codes(self.salient_codes, self.salient_bits), "salient_scale": self.salient_scale,
             "salient_zero": self.salient_zero, "salient_rowptr": rowptr}
        return {k: v.contiguous() for k, v in t.items()}

    @classmethod
    def from_tensors(cls, meta: dict, tensors: dict[str, torch.Tensor], where: str = "module") -> "MaskedBinaryFormat":
        check_tensors(cls, meta, tensors, where)
        k, nnz = meta["in_features"], meta["salient_nnz"]
        mask = unpack_codes(tensors["mask"], 1, k).bool()
        return cls(planes=unpack_codes(tensors["planes"][0], 1, k).bool(), scales=tensors["scales"].reshape(-1),
                   offsets=tensors["offsets"].reshape(-1), mask=mask,
                   salient_codes=unpack_codes(tensors["salient_q"], meta["salient_bits"], nnz),
                   salient_scale=tensors["salient_scale"], salient_zero=tensors["salient_zero"],
                   salient_bits=meta["salient_bits"], paper_bits=meta["paper_bits"])

    # -- math ----------------------------------------------------------------------------
    def binary_part(self, dtype=torch.float32) -> torch.Tensor:
        """A*B + C for every weight [N, K] (the plane's value, also under the mask)."""
        return self.scales.to(dtype)[:, None] * self.planes.to(dtype) + self.offsets.to(dtype)[:, None]

    def salient_values(self, dtype=torch.float32) -> torch.Tensor:
        """Dequantized salient weights [nnz] in row-major mask order."""
        rows = torch.nonzero(self.mask, as_tuple=True)[0]
        return (self.salient_codes.to(dtype) - self.salient_zero.to(dtype)[rows]) * self.salient_scale.to(dtype)[rows]

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        w = self.binary_part(dtype)
        w[self.mask] = self.salient_values(dtype)
        return w
