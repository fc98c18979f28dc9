"""The universal binary-plane layout (KERNELS.md), format version 2 (reads version 1).

    W[n, perm[k]] = out_scale[n] * in_scale[perm[k]] * (sum_p A[p,n,g] B[p,n,k] + C[n,g])   k < K_bin, g = k // G
    W[n, perm[K_bin + j]] = (q[n, j] - zero[n]) * scale[n]                                  salient 4-bit block
    W += S                                                                                  sparse correction (CSR)

so y = out_scale * bitplanes((in_scale * x)[perm[:K_bin]]) + q4(x[perm[K_bin:]]) + S x.
Missing optional parts mean: no scaling, identity permutation, no salient block, no correction.

On disk a permutation that is "binarized channels ascending, then salient ones ascending" (PTQ1.61's
always is) is stored as a K-bit salient mask (`salient_mask`) instead of K int32 indices: 1 bit per
column instead of 32. Version 2 also stores the salient zero point as uint8 (it is an integer 0..15).
Version 1 checkpoints (int32 `perm` always, float16 `salient_zero`) still load.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (MAX_DIM, FormatError, PackedFormat, check_index_range, check_padding_zero, check_row_pointers,
                   check_tensors, meta_flag, meta_int, register_format)
from .bits import pack_codes, pack_nibbles, unpack_codes, unpack_nibbles
from .sparse_correction import SparseCorrection

SCALE_DTYPE = torch.float16


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def mask_order(salient: torch.Tensor) -> torch.Tensor:
    """perm [K] int64 from a bool salient mask [K]: binarized channels ascending, then salient ascending."""
    idx = torch.arange(salient.numel())
    return torch.cat([idx[~salient], idx[salient]])


def _perm_storage(meta: dict) -> str | None:
    """How the permutation is stored: None (identity), "index" (int32 [K]) or "salient_mask" (bits [K])."""
    if not meta["perm"]:
        return None
    return meta.get("perm_storage", "index")  # version 1 knew only "index"


@register_format
@dataclass
class BitPlaneFormat(PackedFormat):
    name = "bitplane"
    version = 2
    readable_versions = (1, 2)
    float_fields = {"scales": "scale", "offsets": "shift", "in_scale": "scale", "out_scale": "scale",
                    "salient_scale": "scale"}  # salient_zero is an integer 0..15 on disk: frozen like the codes

    planes: torch.Tensor  # bool [P, N, K_bin]
    scales: torch.Tensor  # fp16 [P, N, ceil(K_bin / G)]
    offsets: torch.Tensor | None  # fp16 [N, ceil(K_bin / G)]
    group_size: int
    in_features: int
    paper_bits: float
    in_scale: torch.Tensor | None = None  # fp16 [K]
    out_scale: torch.Tensor | None = None  # fp16 [N]
    perm: torch.Tensor | None = None  # int32 [K]: binarized channels first, salient last
    salient_codes: torch.Tensor | None = None  # uint8 codes 0..15 [N, K_sal]
    salient_scale: torch.Tensor | None = None  # fp16 [N]
    salient_zero: torch.Tensor | None = None  # fp16 [N]
    sparse: SparseCorrection | None = None

    @property
    def out_features(self) -> int:
        return self.planes.shape[1]

    @property
    def k_bin(self) -> int:
        return self.planes.shape[2]

    @property
    def k_salient(self) -> int:
        return 0 if self.salient_codes is None else self.salient_codes.shape[1]

    # -- storage -------------------------------------------------------------------------
    def _salient_mask(self) -> torch.Tensor | None:
        """The bool mask [K] when perm is exactly mask_order(mask), else None (perm stored as indices)."""
        if self.perm is None or not self.k_salient:
            return None
        mask = torch.zeros(self.in_features, dtype=torch.bool)
        mask[self.perm[self.k_bin:].long()] = True
        return mask if torch.equal(mask_order(mask), self.perm.long()) else None

    def meta(self) -> dict:
        meta = {
            "format": self.name, "version": self.version,
            "out_features": self.out_features, "in_features": self.in_features,
            "num_planes": self.planes.shape[0], "group_size": self.group_size, "k_salient": self.k_salient,
            "offsets": self.offsets is not None, "in_scale": self.in_scale is not None,
            "out_scale": self.out_scale is not None, "perm": self.perm is not None,
            "sparse_nnz": None if self.sparse is None else int(self.sparse.values.numel()),
            "paper_bits": self.paper_bits,
        }
        if self.perm is not None:
            meta["perm_storage"] = "index" if self._salient_mask() is None else "salient_mask"
        return meta

    @staticmethod
    def channel_perm(meta: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The permutation [K] int64 from stored tensors (either storage), None when there is none."""
        storage = _perm_storage(meta)
        if storage == "index":
            return tensors["perm"].long()
        if storage == "salient_mask":
            mask = unpack_codes(tensors["salient_mask"].cpu(), 1, meta["in_features"]).bool()
            if int(mask.sum()) != meta["k_salient"]:
                raise FormatError(f"bitplane salient_mask marks {int(mask.sum())} channels, the layer has "
                                  f"{meta['k_salient']} salient ones; the checkpoint is corrupted, re-export it")
            return mask_order(mask)
        return None

    @classmethod
    def check_meta(cls, meta: dict, where: str = "module") -> None:
        super().check_meta(meta, where)
        n, k = meta["out_features"], meta["in_features"]
        meta_int(meta, "num_planes", where, 1, 8)
        meta_int(meta, "group_size", where, 1, MAX_DIM)
        meta_int(meta, "k_salient", where, 0, k)
        for flag in ("offsets", "in_scale", "out_scale", "perm"):
            meta_flag(meta, flag, where)
        if "sparse_nnz" not in meta:
            raise FormatError(f"{where}: metadata sparse_nnz is missing (null when there is no sparse correction); "
                              "the checkpoint is corrupted")
        if meta["sparse_nnz"] is not None:
            meta_int(meta, "sparse_nnz", where, 0, n * k)
        if meta["perm"] and meta.get("perm_storage", "index") not in ("index", "salient_mask"):
            raise FormatError(f"{where}: bitplane perm_storage {meta.get('perm_storage')!r} is unknown to this llmbin; "
                              "upgrade llmbin")

    @classmethod
    def check_values(cls, meta: dict, tensors: dict[str, torch.Tensor], where: str = "module") -> None:
        super().check_values(meta, tensors, where)
        k = meta["in_features"]
        if "perm" in tensors:  # stored as indices: exactly a permutation of the K input channels
            perm = tensors["perm"].long()
            check_index_range(perm, 0, k, f"{where}.perm")
            if not torch.equal(torch.sort(perm).values, torch.arange(k)):
                raise FormatError(f"{where}.perm repeats input channels (it is not a permutation of {k}); "
                                  "the checkpoint is corrupted, re-export it")
        if "salient_mask" in tensors:
            check_padding_zero(tensors["salient_mask"], k, f"{where}.salient_mask")
            cls.channel_perm(meta, tensors)  # its popcount is the salient count
        if meta["k_salient"]:
            zero = tensors["salient_zero"].float()
            if not bool(((zero == zero.round()) & (zero >= 0) & (zero <= 15)).all()):
                raise FormatError(f"{where}.salient_zero holds values outside the 4-bit zero points 0..15; "
                                  "the checkpoint is corrupted, re-export it")
        if meta.get("sparse_nnz") is not None:
            check_row_pointers(tensors["sparse_rowptr"], meta["sparse_nnz"], f"{where}.sparse_rowptr")
            check_index_range(tensors["sparse_colidx"].long(), 0, k, f"{where}.sparse_colidx")

    @classmethod
    def expected_tensors(cls, meta: dict) -> dict:
        n, k, p, g = meta["out_features"], meta["in_features"], meta["num_planes"], meta["group_size"]
        k_sal = meta["k_salient"]
        k_bin = k - k_sal
        ng = _ceil_div(k_bin, g)
        exp = {"planes": (torch.int32, (p, n, _ceil_div(k_bin, 32))), "scales": (SCALE_DTYPE, (p, n, ng))}
        if meta["offsets"]:
            exp["offsets"] = (SCALE_DTYPE, (n, ng))
        if meta["in_scale"]:
            exp["in_scale"] = (SCALE_DTYPE, (k,))
        if meta["out_scale"]:
            exp["out_scale"] = (SCALE_DTYPE, (n,))
        storage = _perm_storage(meta)
        if storage == "index":
            exp["perm"] = (torch.int32, (k,))
        elif storage == "salient_mask":
            exp["salient_mask"] = (torch.int32, (_ceil_div(k, 32),))
        elif storage is not None:
            raise FormatError(f"bitplane perm_storage {storage!r} is unknown to this llmbin; upgrade llmbin")
        if k_sal:
            exp["salient_q"] = (torch.uint8, (n, _ceil_div(k_sal, 2)))
            exp["salient_scale"] = (SCALE_DTYPE, (n,))
            exp["salient_zero"] = (torch.uint8 if meta["version"] >= 2 else SCALE_DTYPE, (n,))
        if meta["sparse_nnz"] is not None:
            nnz = meta["sparse_nnz"]
            exp["sparse_values"] = (SCALE_DTYPE, (nnz,))
            exp["sparse_colidx"] = (torch.int16 if k <= 2**15 else torch.int32, (nnz,))
            exp["sparse_rowptr"] = (torch.int32, (n + 1,))
        return exp

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"planes": pack_codes(self.planes, 1), "scales": self.scales}
        optional = {"offsets": self.offsets, "in_scale": self.in_scale, "out_scale": self.out_scale,
                    "salient_scale": self.salient_scale}
        t.update({k: v for k, v in optional.items() if v is not None})
        if self.perm is not None:
            mask = self._salient_mask()
            if mask is None:
                t["perm"] = self.perm.to(torch.int32)
            else:
                t["salient_mask"] = pack_codes(mask, 1)
        if self.salient_codes is not None:
            t["salient_q"] = pack_nibbles(self.salient_codes)
            zero = self.salient_zero.float()
            if not bool(((zero == zero.round()) & (zero >= 0) & (zero <= 15)).all()):
                raise FormatError("bitplane salient_zero must be an integer 0..15 (a 4-bit zero point)")
            t["salient_zero"] = zero.to(torch.uint8)
        if self.sparse is not None:
            t.update(sparse_values=self.sparse.values, sparse_colidx=self.sparse.colidx,
                     sparse_rowptr=self.sparse.rowptr)
        return {k: v.contiguous() for k, v in t.items()}

    @classmethod
    def from_tensors(cls, meta: dict, tensors: dict[str, torch.Tensor], where: str = "module") -> "BitPlaneFormat":
        check_tensors(cls, meta, tensors, where)
        k_sal = meta["k_salient"]
        k_bin = meta["in_features"] - k_sal
        sparse = None
        if meta["sparse_nnz"] is not None:
            sparse = SparseCorrection(tensors["sparse_values"], tensors["sparse_colidx"], tensors["sparse_rowptr"])
        perm = cls.channel_perm(meta, tensors)
        return cls(
            planes=unpack_codes(tensors["planes"], 1, k_bin).bool(), scales=tensors["scales"],
            offsets=tensors.get("offsets"), group_size=meta["group_size"], in_features=meta["in_features"],
            paper_bits=meta["paper_bits"], in_scale=tensors.get("in_scale"), out_scale=tensors.get("out_scale"),
            perm=None if perm is None else perm.to(torch.int32),
            salient_codes=unpack_nibbles(tensors["salient_q"], k_sal) if k_sal else None,
            salient_scale=tensors.get("salient_scale"),
            salient_zero=tensors["salient_zero"].to(SCALE_DTYPE) if k_sal else None, sparse=sparse)

    # -- math ----------------------------------------------------------------------------
    def binary_part(self, dtype=torch.float32) -> torch.Tensor:
        """sum_p A B + C on the binarized channels, in their stored (permuted) order: [N, K_bin]."""
        g = self.group_size
        expand = lambda t: t.to(dtype).repeat_interleave(g, dim=-1)[..., : self.k_bin]  # noqa: E731
        w = (expand(self.scales) * self.planes.to(dtype)).sum(0)
        if self.offsets is not None:
            w = w + expand(self.offsets)
        return w

    def salient_part(self, dtype=torch.float32) -> torch.Tensor:
        """Dequantized 4-bit salient block [N, K_sal]."""
        return (self.salient_codes.to(dtype) - self.salient_zero.to(dtype)[:, None]) * self.salient_scale.to(dtype)[:, None]

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        n, k, device = self.out_features, self.in_features, self.planes.device
        perm = torch.arange(k, device=device) if self.perm is None else self.perm.long()
        wb = self.binary_part(dtype)
        if self.out_scale is not None:
            wb = wb * self.out_scale.to(dtype)[:, None]
        if self.in_scale is not None:
            wb = wb * self.in_scale.to(dtype)[perm[: self.k_bin]][None, :]
        w = torch.zeros(n, k, dtype=dtype, device=device)
        w[:, perm[: self.k_bin]] = wb
        if self.k_salient:
            w[:, perm[self.k_bin:]] = self.salient_part(dtype)
        if self.sparse is not None:
            w = w + self.sparse.to_dense(n, k, dtype)
        return w

    def masked_sum_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """y = x W^T computed the kernels' way: masked sums of x per plane and group, no per-weight multiply."""
        dtype = x.dtype
        perm = torch.arange(self.in_features) if self.perm is None else self.perm.long()
        xs = x if self.in_scale is None else x * self.in_scale.to(dtype)
        xb = xs[..., perm[: self.k_bin]]
        g = self.group_size
        ng = self.scales.shape[-1]
        pad = ng * g - self.k_bin
        xg = torch.nn.functional.pad(xb, (0, pad)).unflatten(-1, (ng, g))  # [M, ng, G]
        bits = torch.nn.functional.pad(self.planes.to(dtype), (0, pad)).unflatten(-1, (ng, g))  # [P, N, ng, G]
        masked = torch.einsum("mgk,pngk->mpng", xg, bits)
        y = torch.einsum("mpng,png->mn", masked, self.scales.to(dtype))
        if self.offsets is not None:
            y = y + xg.sum(-1) @ self.offsets.to(dtype).T
        if self.out_scale is not None:
            y = y * self.out_scale.to(dtype)
        if self.k_salient:
            y = y + x[..., perm[self.k_bin:]] @ self.salient_part(dtype).T
        if self.sparse is not None:
            y = y + x @ self.sparse.to_dense(self.out_features, self.in_features, dtype).T
        return y
