"""How many salient channels a bit budget buys: PTQ1.61's all-in bits per weight, from the packed layout.

A linear [N, K] with k salient input channels stores (formats/bitplane.py, version 2) one sign plane
[N, K - k] padded to 32-bit words per row, per-row fp16 A and C, per-column fp16 r2, the K-bit salient
mask, and the 4-bit block [N, k] with per-row fp16 scale and uint8 zero. The per-row and per-column
costs make the same ratio cost more bits on narrow models (576 columns) than on wide ones (4096), so a
budget, not a ratio, is what keeps "1.6 bits" meaning the same thing on every model.
"""
from __future__ import annotations

from functools import lru_cache

from ...errors import LlmbinError
from ...formats.bitplane import BitPlaneFormat

_ELEMENT_BYTES = {"int32": 4, "float16": 2, "uint8": 1}


def structured_meta(n: int, k: int, k_salient: int) -> dict:
    """The format meta StructuredBinary.to_format() writes for this shape (see test_ptq161: they agree)."""
    k_bin = k - k_salient
    meta = {"format": "bitplane", "version": BitPlaneFormat.version, "out_features": n, "in_features": k,
            "num_planes": 1, "group_size": max(k_bin, 1), "k_salient": k_salient, "offsets": True,
            "in_scale": True, "out_scale": False, "perm": k_salient > 0, "sparse_nnz": None}
    if k_salient:
        meta["perm_storage"] = "salient_mask"
    return meta


@lru_cache(maxsize=None)
def all_in_bits(n: int, k: int, k_salient: int) -> float:
    """Stored bits per weight of a PTQ1.61 linear: the byte sizes of the tensors the format stores."""
    nbytes = 0
    for dtype, shape in BitPlaneFormat.expected_tensors(structured_meta(n, k, k_salient)).values():
        count = 1
        for s in shape:
            count *= s
        nbytes += count * _ELEMENT_BYTES[str(dtype).removeprefix("torch.")]
    return 8 * nbytes / (n * k)


@lru_cache(maxsize=None)
def salient_count_for_budget(shapes: tuple[tuple[int, int], ...], bpw: float) -> int:
    """The largest salient count k for linears [N_i, K] sharing one input (one mask) such that every one of
    them stores at most `bpw` bits per weight all-in (the bits are not monotone in k in small steps:
    the sign plane is padded to whole words, so every k is tried)."""
    width = shapes[0][1]
    best = -1
    for k in range(width):
        if all(all_in_bits(n, width, k) <= bpw for n, _ in shapes):
            best = k
    if best < 0:
        smallest = max(all_in_bits(n, width, 0) for n, _ in shapes)
        raise LlmbinError(f"ptq161 bpw={bpw} is below the smallest layout of linears {list(shapes)} "
                          f"({smallest:.4f} bits all-in with no salient channel); raise bpw or set salient_ratio")
    return best
