"""Packed layouts: golden bytes freeze the on-disk layout; properties check pack/unpack and the masked-sum math."""
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from llmbin.formats import BitPlaneFormat, FormatError, SparseCorrection, UniformFormat, format_from_meta
from llmbin.formats.bitplane import mask_order
from llmbin.formats.bits import pack_codes, pack_nibbles, unpack_codes, unpack_nibbles


def test_golden_bitplane_words():
    bits = torch.zeros(1, 1, 40, dtype=torch.bool)
    bits[0, 0, [0, 1, 31, 32, 39]] = True  # LSB first: bit j of word w is k = 32w + j
    fmt = BitPlaneFormat(planes=bits, scales=torch.tensor([[[0.5, 0.25]]], dtype=torch.float16),
                         offsets=torch.tensor([[-1.0, 2.0]], dtype=torch.float16), group_size=32, in_features=40,
                         paper_bits=1.0)
    t = fmt.tensors()
    assert t["planes"].dtype == torch.int32
    assert t["planes"].tolist() == [[[-2147483645, 129]]]  # 0x80000003, 0x00000081
    assert t["scales"].view(torch.int16).tolist() == [[[0x3800, 0x3400]]]  # fp16 bit patterns of 0.5, 0.25
    assert sorted(t) == ["offsets", "planes", "scales"]
    w = fmt.dequantize()
    assert w[0, 0].item() == 0.5 - 1.0 and w[0, 2].item() == -1.0 and w[0, 32].item() == 0.25 + 2.0


def test_golden_nibbles_and_uniform_words():
    assert pack_nibbles(torch.tensor([[1, 2, 15]])).tolist() == [[0x21, 0x0F]]
    codes = torch.arange(1, 11).unsqueeze(0) % 8  # ten 3-bit codes in one word, 2 spare bits
    expected = sum(int(c) << (3 * j) for j, c in enumerate(codes[0]))
    assert pack_codes(codes, 3).tolist() == [[expected]]
    assert pack_codes(torch.tensor([[3, 0, 1, 2]]), 2).tolist() == [[3 | 1 << 4 | 2 << 6]]
    fmt = UniformFormat(torch.tensor([[0, 15, 7, 8]]), torch.tensor([[0.5]], dtype=torch.float16),
                        torch.tensor([[8]], dtype=torch.uint8), 4, 4)
    assert fmt.tensors()["qweight"].tolist() == [[0 | 15 << 4 | 7 << 8 | 8 << 12]]
    assert fmt.dequantize().tolist() == [[-4.0, 3.5, -0.5, 0.0]]


def random_bitplane(n, k, planes, group, k_sal, sparse, seed, scaled=True):
    g = torch.Generator().manual_seed(seed)
    kb = k - k_sal
    ng = -(-kb // group)
    return BitPlaneFormat(
        planes=torch.rand(planes, n, kb, generator=g) > 0.5,
        scales=torch.randn(planes, n, ng, generator=g).half(),
        offsets=torch.randn(n, ng, generator=g).half(), group_size=group, in_features=k, paper_bits=1.0,
        in_scale=(torch.rand(k, generator=g) + 0.5).half() if scaled else None,
        out_scale=(torch.rand(n, generator=g) + 0.5).half() if scaled else None,
        perm=torch.randperm(k, generator=g).int() if k_sal else None,
        salient_codes=torch.randint(0, 16, (n, k_sal), generator=g).to(torch.uint8) if k_sal else None,
        salient_scale=torch.rand(n, generator=g).half() if k_sal else None,
        salient_zero=torch.randint(0, 16, (n,), generator=g).half() if k_sal else None,
        sparse=SparseCorrection.from_dense(torch.where(torch.rand(n, k, generator=g) < 0.1,
                                                       torch.randn(n, k, generator=g), 0.0)) if sparse else None)


shapes = dict(n=st.integers(1, 9), k=st.integers(1, 100), planes=st.integers(1, 2), group=st.sampled_from([8, 32, 128]),
              salient=st.integers(0, 5), sparse=st.booleans(), seed=st.integers(0, 10**6))


@settings(max_examples=60, deadline=None)
@given(**shapes)
def test_pack_unpack_identity(n, k, planes, group, salient, sparse, seed):
    k_sal = min(salient, k - 1)
    fmt = random_bitplane(n, k, planes, group, k_sal, sparse, seed)
    back = BitPlaneFormat.from_tensors(fmt.meta(), fmt.tensors())
    assert torch.equal(back.planes, fmt.planes)
    if k_sal:
        assert torch.equal(back.salient_codes, fmt.salient_codes)
    assert torch.equal(back.dequantize(), fmt.dequantize())
    codes = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(seed))
    for bits in (1, 2, 3, 4, 8):
        c = codes % (2**bits)
        assert torch.equal(unpack_codes(pack_codes(c, bits), bits, k), c)
    assert torch.equal(unpack_nibbles(pack_nibbles(codes), k), codes.to(torch.uint8))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 4), **shapes)
def test_masked_sum_equals_dequantize_matmul(m, n, k, planes, group, salient, sparse, seed):
    k_sal = min(salient, k - 1)
    fmt = random_bitplane(n, k, planes, group, k_sal, sparse, seed)
    x = torch.randn(m, k, dtype=torch.float64)
    reference = x @ fmt.dequantize(torch.float64).T
    torch.testing.assert_close(fmt.masked_sum_matmul(x), reference, atol=1e-10, rtol=1e-10)


def test_strict_tensor_checks():
    fmt = random_bitplane(4, 40, 2, 32, 3, True, 0)
    meta, tensors = fmt.meta(), fmt.tensors()
    with pytest.raises(FormatError, match="missing packed tensor.*scales"):
        BitPlaneFormat.from_tensors(meta, {k: v for k, v in tensors.items() if k != "scales"})
    with pytest.raises(FormatError, match="unexpected packed tensor"):
        BitPlaneFormat.from_tensors(meta, {**tensors, "extra": torch.zeros(1)})
    with pytest.raises(FormatError, match=r"planes: stored .*\(2, 4, 3\)"):
        BitPlaneFormat.from_tensors(meta, {**tensors, "planes": torch.zeros(2, 4, 3, dtype=torch.int32)})
    with pytest.raises(FormatError, match="version 99 is not supported"):
        format_from_meta({**meta, "version": 99})
    with pytest.raises(FormatError, match="unknown packed format"):
        format_from_meta({**meta, "format": "nope"})


def test_all_in_bits_counts_every_stored_byte():
    fmt = random_bitplane(64, 128, 1, 128, 0, False, 0, scaled=False)
    # 1 bit per weight + fp16 scale and offset per row of 128
    assert fmt.all_in_bits() == pytest.approx(1 + 32 / 128)


def salient_layer(mask_ordered: bool):
    """A bitplane layer with a 4-bit salient block; its perm is mask-ordered or a general permutation."""
    fmt = random_bitplane(3, 40, 1, 40, 5, False, 7)
    salient = torch.zeros(40, dtype=torch.bool)
    salient[[0, 9, 31, 32, 39]] = True
    if mask_ordered:
        fmt.perm = mask_order(salient).int()
    return fmt


def test_golden_mask_ordered_perm_is_stored_as_a_salient_bitmap():
    fmt = salient_layer(mask_ordered=True)
    meta, t = fmt.meta(), fmt.tensors()
    assert meta["version"] == 2 and meta["perm_storage"] == "salient_mask"
    assert "perm" not in t and t["salient_mask"].tolist() == [-2147483135, 129]  # bits 0, 9, 31 | bits 0, 7 (k = 32, 39)
    assert t["salient_zero"].dtype == torch.uint8 and t["salient_zero"].tolist() == fmt.salient_zero.int().tolist()
    back = BitPlaneFormat.from_tensors(meta, t)
    assert torch.equal(back.perm, fmt.perm) and torch.equal(back.dequantize(), fmt.dequantize())
    # 1 bit per input channel instead of 32 for the order, 8 bits per row instead of 16 for the zero point
    general = salient_layer(mask_ordered=False)
    assert general.meta()["perm_storage"] == "index" and general.tensors()["perm"].dtype == torch.int32
    assert general.stored_bytes() - fmt.stored_bytes() == (40 * 4 - 2 * 4)


def test_version_1_checkpoints_still_load():
    fmt = salient_layer(mask_ordered=True)
    v2 = fmt.tensors()
    meta = {k: v for k, v in fmt.meta().items() if k != "perm_storage"} | {"version": 1}
    v1 = {k: v for k, v in v2.items() if k != "salient_mask"}
    v1 |= {"perm": fmt.perm.int(), "salient_zero": fmt.salient_zero.half()}
    back = BitPlaneFormat.from_tensors(dict(meta), v1)
    assert torch.equal(back.dequantize(), fmt.dequantize())
    with pytest.raises(FormatError, match="salient_zero: stored torch.uint8"):
        BitPlaneFormat.from_tensors(dict(meta), {**v1, "salient_zero": v2["salient_zero"]})


def test_corrupted_salient_mask_is_refused():
    fmt = salient_layer(mask_ordered=True)
    t = fmt.tensors()
    t["salient_mask"] = t["salient_mask"] | torch.tensor([2, 0], dtype=torch.int32)  # channel 1 marked too
    with pytest.raises(FormatError, match="salient_mask marks 6 channels.*5 salient"):
        BitPlaneFormat.from_tensors(fmt.meta(), t)


def test_non_integer_salient_zero_is_refused():
    fmt = salient_layer(mask_ordered=True)
    fmt.salient_zero = fmt.salient_zero + 0.5
    with pytest.raises(FormatError, match="integer 0..15"):
        fmt.tensors()
