"""Bit packing primitives shared by the formats. All little-endian, LSB first along the last dim."""
from __future__ import annotations

import torch


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned `bits`-wide codes along the last dim into int32 words.

    Each word holds floor(32 / bits) codes, code j of a word at bit offset j*bits;
    the last word is zero-padded. bits=1 gives the bit-plane layout of KERNELS.md.
    """
    per = 32 // bits
    *lead, k = codes.shape
    words = -(-k // per)
    padded = torch.zeros(*lead, words * per, dtype=torch.int64, device=codes.device)
    padded[..., :k] = codes.to(torch.int64)
    shifts = torch.arange(per, dtype=torch.int64, device=codes.device) * bits
    packed = (padded.view(*lead, words, per) << shifts).sum(-1)
    # reinterpret the unsigned 32-bit value as int32 (two's complement)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_codes(words: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of pack_codes: int64 codes [..., k]."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int64, device=words.device) * bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    codes = (w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
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
