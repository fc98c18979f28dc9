"""Kernel-side view of a bit-plane layer, shared by the cpu and triton backends.

A layer becomes one or two *segments*, each a plain bit-plane problem over its own slice of a
gathered activation vector:
- the binarized channels: P planes, per-group scales and offsets with out_scale folded in;
- the PTQ1.61 4-bit salient block: its codes q = sum_b 2^b bit_b as 4 planes with per-row scales
  s * 2^b and offset -z * s, so s * (q - z) . x costs no separate decode.
Every group is padded to whole 32-bit words (a word never straddles two groups), and one gather
index over x (with a multiplier: in_scale for binarized channels, 1 for salient ones) applies
perm, in_scale and the padding at once. The PB-LLM sparse correction stays as stored (CSR).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...formats.bitplane import BitPlaneFormat
from ...formats.bits import pack_codes, unpack_codes, unpack_nibbles


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Segment:
    words: torch.Tensor  # int32 [P, N, ng * wpg], group j in words [j*wpg, (j+1)*wpg)
    scales: torch.Tensor  # float32 [P, N, ng]
    offsets: torch.Tensor | None  # float32 [N, ng]
    ng: int
    wpg: int


@dataclass
class LayerLayout:
    segments: list
    src: torch.Tensor  # int64 [KX*32]: x channel for each slot of the gathered vector, -1 = zero padding
    gscale: torch.Tensor  # float32 [KX*32]: multiplier per slot (in_scale or 1; 0 for padding)
    sparse: tuple | None  # (values fp16, colidx int16/int32, rowptr int32), original channel order
    out_features: int
    in_features: int
    salient_last: bool = False  # the last segment is PTQ1.61's salient block: the outlier channels, none before it

    @property
    def identity(self) -> bool:
        """True when the gathered vector is x itself (no perm, in_scale, salient block or padding)."""
        k = self.in_features
        return self.src.numel() == k and bool((self.src == torch.arange(k)).all()) and bool((self.gscale == 1).all())


def group_words(planes: torch.Tensor, k: int, g: int) -> tuple[torch.Tensor, int, int]:
    """Packed planes [P, N, ceil(k/32)] -> ([P, N, ng*wpg], ng, wpg) with each group on whole words."""
    g = min(g, k)
    ng, wpg = _ceil(k, g), _ceil(g, 32)
    if ng == 1 or g % 32 == 0:  # groups already start on words: only pad the last one
        return F.pad(planes[..., : ng * wpg], (0, ng * wpg - min(planes.shape[-1], ng * wpg))), ng, wpg
    bits = F.pad(unpack_codes(planes, 1, k), (0, ng * g - k)).unflatten(-1, (ng, g))
    return pack_codes(F.pad(bits, (0, wpg * 32 - g)), 1).flatten(-2), ng, wpg


def group_positions(k: int, g: int) -> torch.Tensor:
    """Channel (within the segment) of each padded slot, -1 for padding: [ng*wpg*32]."""
    g = min(g, k)
    ng, wpg = _ceil(k, g), _ceil(g, 32)
    j = torch.arange(wpg * 32)
    pos = torch.arange(ng)[:, None] * g + j[None, :]
    return torch.where((j[None, :] < g) & (pos < k), pos, -1).flatten()


def layer_layout(meta: dict, buffers: dict[str, torch.Tensor]) -> LayerLayout:
    """Build the segments from a QuantLinear's buffers (on-disk tensors), on the CPU."""
    buf = {name: b.detach().cpu() for name, b in buffers.items()}
    n, k, k_sal = meta["out_features"], meta["in_features"], meta["k_salient"]
    k_bin = k - k_sal
    perm = BitPlaneFormat.channel_perm(meta, buf)
    perm = torch.arange(k) if perm is None else perm
    out_scale = buf["out_scale"].float() if meta["out_scale"] else torch.ones(n)
    in_scale = buf["in_scale"].float() if meta["in_scale"] else torch.ones(k)
    words, ng, wpg = group_words(buf["planes"], k_bin, meta["group_size"])
    offsets = buf["offsets"].float() * out_scale[:, None] if meta["offsets"] else None
    segments = [Segment(words.contiguous(), (buf["scales"].float() * out_scale[None, :, None]).contiguous(),
                        None if offsets is None else offsets.contiguous(), ng, wpg)]
    pos = group_positions(k_bin, meta["group_size"])
    src = torch.where(pos >= 0, perm[pos.clamp(min=0)], -1)
    gscale = torch.where(pos >= 0, in_scale[src.clamp(min=0)], 0.0)
    if k_sal:
        codes = unpack_nibbles(buf["salient_q"], k_sal).long()
        planes = pack_codes((codes[None] >> torch.arange(4)[:, None, None]) & 1, 1)
        s, z = buf["salient_scale"].float(), buf["salient_zero"].float()
        scales = (s[None, :] * (2.0 ** torch.arange(4))[:, None])[..., None]
        segments.append(Segment(planes.contiguous(), scales.contiguous(), (-z * s)[:, None].contiguous(), 1,
                                _ceil(k_sal, 32)))
        spos = group_positions(k_sal, k_sal)
        ssrc = torch.where(spos >= 0, perm[k_bin + spos.clamp(min=0)], -1)
        src, gscale = torch.cat([src, ssrc]), torch.cat([gscale, (ssrc >= 0).float()])
    sparse = None
    if meta["sparse_nnz"] is not None:
        sparse = (buf["sparse_values"].half().contiguous(), buf["sparse_colidx"].contiguous(),
                  buf["sparse_rowptr"].int().contiguous())
    return LayerLayout(segments, src, gscale.float(), sparse, n, k, salient_last=bool(k_sal))


def uniform_layout(meta: dict, buffers: dict[str, torch.Tensor]) -> LayerLayout:
    """A `uniform` layer (q - z) * s as bit planes: code bit b is plane b with scale s * 2^b, offset -z * s.

    At most 4 planes per segment (the kernel's limit): 8-bit codes become two segments that read the
    same activations, the high nibble's planes scaled by 2^4 more. Groups are padded to whole words.
    """
    buf = {name: b.detach().cpu() for name, b in buffers.items()}
    n, k, bits = meta["out_features"], meta["in_features"], meta["bits"]
    g = min(meta["group_size"], k)
    codes = unpack_codes(buf["qweight"], bits, k).to(torch.int32 if bits > 8 else torch.uint8)
    s, z = buf["scales"].float(), buf["zeros"].float()
    pos = group_positions(k, g)
    segments, src = [], []
    for first in range(0, bits, 4):
        planes = torch.arange(first, min(first + 4, bits))
        # one plane at a time in bytes: the planes of a whole head at once in int64 peaked at gigabytes
        packed = torch.stack([pack_codes((codes >> int(b)) & 1, 1) for b in planes])
        words, ng, wpg = group_words(packed, k, g)
        scales = s[None] * (2.0 ** planes.float())[:, None, None]
        offsets = (-z * s).contiguous() if first == 0 else None
        segments.append(Segment(words.contiguous(), scales.contiguous(), offsets, ng, wpg))
        src.append(pos)
    src = torch.cat(src)
    return LayerLayout(segments, src, (src >= 0).float(), None, n, k)


def uniform_codes(meta: dict, buffers: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """A `uniform` layer in the integer-code kernel's layout (uniform_kernels.h): (codes uint8 [NB, lines, 32],
    scales fp16 and zero points uint8 [NB, groups, 16] as the format stores them, bits). Rows padded to blocks of 16, columns to blocks of 32
    (zero codes); up to 5 bits two codes' low 4 bits share a byte, 5-bit codes add two lines of fifth bits a block."""
    buf = {name: b.detach().cpu() for name, b in buffers.items()}
    n, k, bits = meta["out_features"], meta["in_features"], meta["bits"]
    nb, kp = _ceil(n, 16), _ceil(k, 32) * 32
    codes = F.pad(unpack_codes(buf["qweight"], bits, k).to(torch.uint8), (0, kp - k, 0, nb * 16 - n))
    if bits <= 5:  # byte h of line q: code(4q + h) | code(4q + 2 + h) << 4 (low 4 bits of each)
        quads = (codes & 15).view(nb, 16, kp // 4, 4)
        pairs = quads[..., 0:2] | (quads[..., 2:4] << 4)
    else:  # byte h of line j: code(2j + h)
        pairs = codes.view(nb, 16, kp // 2, 2)
    lines = pairs.permute(0, 2, 1, 3).reshape(nb, kp // 32, -1, 32)
    if bits == 5:  # per block, word 2r + h (uint16, little-endian) bit j = bit 4 of code(r, 2j + h)
        fifth = ((codes >> 4) & 1).view(nb, 16, kp // 32, 16, 2).to(torch.int32)
        words = (fifth << torch.arange(16, dtype=torch.int32).view(1, 1, 1, 16, 1)).sum(3)  # [nb, 16, KB, 2]
        words = words.permute(0, 2, 1, 3).reshape(nb, kp // 32, 32)
        low_high = torch.stack([words & 255, words >> 8], -1).to(torch.uint8).view(nb, kp // 32, 2, 32)
        lines = torch.cat([lines, low_high], 2)
    lines = lines.reshape(nb, -1, 32).contiguous()

    def blocks(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, 0, 0, nb * 16 - n)).view(nb, 16, -1).permute(0, 2, 1).contiguous()

    # the format stores fp16 and uint8; a model cast to another float dtype casts its buffers, exactly, from fp16
    return lines, blocks(buf["scales"].to(torch.float16)), blocks(buf["zeros"].to(torch.uint8)), bits
