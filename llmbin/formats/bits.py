"""Bit packing primitives shared by the formats. All little-endian, LSB first along the last dim."""
from __future__ import annotations

import sys

import numpy as np
import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned `bits`-wide codes along the last dim into int32 words.

    Each word holds floor(32 / bits) codes, code j of a word at bit offset j*bits;
    the last word is zero-padded. bits=1 gives the bit-plane layout of KERNELS.md.
    """
    per = 32 // bits
    *lead, k = codes.shape
    words = -(-k // per)
    if bits == 1 and codes.device.type == "cpu" and sys.byteorder == "little":
        # bit planes (the bulk of every checkpoint and kernel layout): numpy packs 8 per byte, LSB first, and four
        # little-endian bytes are the int32 word
        planes = torch.nn.functional.pad(codes.to(torch.uint8), (0, words * 32 - k)).contiguous()
        return torch.from_numpy(np.packbits(planes.numpy(), axis=-1, bitorder="little")).view(torch.int32)
    # int32 throughout, one code position per pass: a whole-tensor int64 version held 8 bytes per code (1.8 GB
    # for an 8-bit 49152 x 576 head as planes); a shift into bit 31 wraps to the two's-complement word we store
    padded = torch.nn.functional.pad(codes.to(torch.int32), (0, words * per - k)).view(*lead, words, per)
    packed = torch.zeros(*lead, words, dtype=torch.int32, device=codes.device)
    for j in range(per):
        packed |= padded[..., j] << (j * bits)
    return packed


def unpack_codes(words: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of pack_codes: int64 codes [..., k]."""
    per = 32 // bits
    words = words.to(torch.int32)
    codes = torch.empty(*words.shape, per, dtype=torch.int64, device=words.device)
    mask = (1 << bits) - 1
    for j in range(per):
        # arithmetic shift of the int32 word, then the mask keeps only this code's bits
        codes[..., j] = (words >> (j * bits)) & mask
    return codes.flatten(-2)[..., :k]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per uint8 byte along the last dim, low nibble first."""
    *lead, k = codes.shape
    padded = torch.zeros(*lead, k + (k % 2), dtype=torch.uint8, device=codes.device)
    padded[..., :k] = codes.to(torch.uint8)
    pairs = padded.view(*lead, -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_nibbles(packed: torch.Tensor, k: int) -> torch.Tensor:
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)[..., :k]
