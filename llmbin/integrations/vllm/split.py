"""The part of a packed matrix one tensor-parallel rank keeps.

Rows (output features: column-parallel layers, the vocabulary of embeddings and heads) split in every format: a
row's codes, scales and corrections belong to that row alone, so the packed tensors are cut without unpacking,
except PB-LLM's salient code stream (masked), which is re-packed from the rank's first salient code.

Columns (input features: row-parallel layers) split only where each side of the cut is again a whole layout:
- a layer with one group per row (PTQ1.61, PB-LLM's masked form, per-row uniform) splits anywhere: its row
  scales hold for any subset of the row's weights, and its permutation is re-numbered within the rank;
- a layer with several groups along K (DB-LLM, grouped GPTQ) splits where the cut falls on a group boundary,
  and only when its channels are not permuted (a permutation scatters one group over every rank);
- anything else cannot be split, and `column_split_problem` says why before any tensor loads.
"""
from __future__ import annotations

import dataclasses

import torch

from ...errors import LlmbinError
from ...formats import BitPlaneFormat, SparseCorrection, format_from_meta
from ...formats.bits import pack_codes, unpack_codes

# the dimension of each stored tensor that runs over rows; None: shared by every row (input-side tensors)
ROW_DIM = {
    "uniform": {"qweight": 0, "scales": 0, "zeros": 0},
    "bitplane": {"planes": 1, "scales": 1, "offsets": 0, "out_scale": 0, "salient_q": 0, "salient_scale": 0,
                 "salient_zero": 0, "in_scale": None, "perm": None, "salient_mask": None},
    "masked": {"planes": 1, "scales": 1, "offsets": 0, "mask": 0, "salient_scale": 0, "salient_zero": 0},
}


def take_rows(meta: dict, tensors: dict[str, torch.Tensor], start: int, stop: int) -> tuple[dict, dict]:
    """(meta, tensors) of rows [start, stop) of a packed matrix."""
    if (start, stop) == (0, meta["out_features"]):
        return meta, tensors
    fmt = meta["format"]
    out = {name: t if ROW_DIM[fmt][name] is None else t.narrow(ROW_DIM[fmt][name], start, stop - start)
           for name, t in tensors.items() if name in ROW_DIM[fmt]}
    meta = {**meta, "out_features": stop - start}
    if fmt == "bitplane" and meta.get("sparse_nnz") is not None:
        rowptr = tensors["sparse_rowptr"]
        first, last = int(rowptr[start]), int(rowptr[stop])
        out.update(sparse_values=tensors["sparse_values"][first:last],
                   sparse_colidx=tensors["sparse_colidx"][first:last], sparse_rowptr=rowptr[start:stop + 1] - first)
        meta["sparse_nnz"] = last - first
    if fmt == "masked":
        rowptr = tensors["salient_rowptr"]
        first, last = int(rowptr[start]), int(rowptr[stop])
        codes = unpack_codes(tensors["salient_q"], meta["salient_bits"], meta["salient_nnz"])[first:last]
        out.update(salient_q=pack_codes(codes, meta["salient_bits"]), salient_rowptr=rowptr[start:stop + 1] - first)
        meta["salient_nnz"] = last - first
    return meta, {name: t.contiguous() for name, t in out.items()}


def _one_group(meta: dict) -> bool:
    if meta["format"] == "masked":
        return True
    k_bin = meta["in_features"] - meta.get("k_salient", 0)
    return meta["group_size"] >= k_bin


def column_split_problem(meta: dict, start: int, stop: int) -> str | None:
    """None when columns [start, stop) of this layout form a layout of their own, else why not (one clause)."""
    if (start, stop) == (0, meta["in_features"]) or _one_group(meta):
        return None
    if meta["format"] == "bitplane" and meta["perm"]:
        return "its input channels are permuted across several groups, so every rank would need every group"
    g, k_bin = meta["group_size"], meta["in_features"] - meta.get("k_salient", 0)
    if start % g or (stop < k_bin and stop % g):
        return f"its groups of {g} input channels do not align with this rank's channels {start}..{stop}"
    if start >= k_bin:
        return f"this rank's channels {start}..{stop} are all salient ones, which leaves it no binarized part"
    return None


def take_columns(meta: dict, tensors: dict[str, torch.Tensor], start: int, stop: int) -> tuple[dict, dict]:
    """(meta, tensors) of columns [start, stop): x[..., start:stop] times them is this rank's share of x W^T."""
    if (start, stop) == (0, meta["in_features"]):
        return meta, tensors
    fmt = format_from_meta(meta).from_tensors(meta, tensors)
    if meta["format"] == "uniform":
        part = _uniform_columns(fmt, start, stop)
    elif meta["format"] == "masked":
        part = _masked_columns(fmt, start, stop)
    else:
        part = _bitplane_columns(fmt, start, stop)
    return {**meta, **part.meta()}, part.tensors()


def _groups(fmt, start: int, stop: int, k: int) -> tuple[slice, int]:
    """The group columns a column range covers, and the group size of the part."""
    g = fmt.group_size
    if g >= k:  # one group per row: its scales hold for any part of the row
        return slice(None), stop - start
    return slice(start // g, -(-stop // g)), g


def _uniform_columns(fmt, start: int, stop: int):
    groups, g = _groups(fmt, start, stop, fmt.in_features)
    return dataclasses.replace(fmt, codes=fmt.codes[:, start:stop], scales=fmt.scales[:, groups],
                               zeros=fmt.zeros[:, groups], group_size=g)


def _masked_columns(fmt, start: int, stop: int):
    _, cols = torch.nonzero(fmt.mask, as_tuple=True)  # row-major: the order of the salient codes
    keep = (cols >= start) & (cols < stop)
    return dataclasses.replace(fmt, planes=fmt.planes[:, start:stop], mask=fmt.mask[:, start:stop],
                               salient_codes=fmt.salient_codes[keep])


def _bitplane_columns(fmt: BitPlaneFormat, start: int, stop: int) -> BitPlaneFormat:
    k, k_bin = fmt.in_features, fmt.k_bin
    perm = torch.arange(k) if fmt.perm is None else fmt.perm.long()
    mine = (perm >= start) & (perm < stop)  # stored positions whose channel this rank holds, order kept
    bin_pos, sal_pos = torch.nonzero(mine[:k_bin]).flatten(), torch.nonzero(mine[k_bin:]).flatten()
    if not bin_pos.numel():
        raise LlmbinError(f"input channels {start}..{stop} of this layer are all salient, which leaves a "
                          "tensor-parallel rank no binarized part; serve it with pipeline parallelism instead")
    groups, g = _groups(fmt, start, stop, k_bin)
    if g == stop - start:  # one group: it spans what this rank keeps of the binarized channels
        g = max(int(bin_pos.numel()), 1)
    local_perm = torch.cat([perm[bin_pos], perm[k_bin + sal_pos]]) - start
    identity = torch.equal(local_perm, torch.arange(stop - start))
    sparse = None
    if fmt.sparse is not None:
        dense = fmt.sparse.to_dense(fmt.out_features, k, torch.float16)[:, start:stop]
        sparse = SparseCorrection.from_dense(dense)
    salient = sal_pos.numel() > 0
    return dataclasses.replace(
        fmt, planes=fmt.planes[:, :, bin_pos], scales=fmt.scales[:, :, groups],
        offsets=None if fmt.offsets is None else fmt.offsets[:, groups], group_size=g, in_features=stop - start,
        in_scale=None if fmt.in_scale is None else fmt.in_scale[start:stop],
        perm=None if identity else local_perm.to(torch.int32),
        salient_codes=fmt.salient_codes[:, sal_pos] if salient else None,
        salient_scale=fmt.salient_scale if salient else None, salient_zero=fmt.salient_zero if salient else None,
        sparse=sparse)
