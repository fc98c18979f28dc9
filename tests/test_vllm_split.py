"""The part of a packed matrix a vLLM tensor-parallel rank keeps (integrations/vllm/split.py) is exactly that part of
the dequantized matrix, in every format; a cut the layout cannot take is refused, with the reason. Pure llmbin:
runs without vLLM."""
from __future__ import annotations

import pytest
import torch

from llmbin.formats import BitPlaneFormat, SparseCorrection, UniformFormat, format_from_meta
from llmbin.formats.bitplane import mask_order
from llmbin.formats.masked import MaskedBinaryFormat
from llmbin.integrations.vllm.split import column_split_problem, take_columns, take_rows

N, K = 48, 96


def bitplane(gen, planes=1, group=32, perm=None, k_sal=0, in_scale=False, out_scale=False, sparse=False):
    k_bin = K - k_sal
    ng = -(-k_bin // group)
    if perm == "index":
        perm = torch.randperm(K, generator=gen).int()
    elif perm == "mask":
        salient = torch.zeros(K, dtype=torch.bool)
        salient[torch.randperm(K, generator=gen)[:k_sal]] = True
        perm = mask_order(salient).int()
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    return BitPlaneFormat(
        planes=rand(planes, N, k_bin) > 0.5, scales=rand(planes, N, ng).half(), offsets=(rand(N, ng) - 0.5).half(),
        group_size=group, in_features=K, paper_bits=1.0, perm=perm,
        in_scale=(rand(K) + 0.5).half() if in_scale else None, out_scale=(rand(N) + 0.5).half() if out_scale else None,
        salient_codes=torch.randint(0, 16, (N, k_sal), generator=gen) if k_sal else None,
        salient_scale=rand(N).half() if k_sal else None,
        salient_zero=torch.randint(0, 16, (N,), generator=gen).half() if k_sal else None,
        sparse=SparseCorrection.from_dense(torch.where(rand(N, K) > 0.9, rand(N, K) - 0.5, 0.0)) if sparse else None)


def masked(gen):
    mask = torch.rand(N, K, generator=gen) > 0.85
    return MaskedBinaryFormat(
        planes=(torch.rand(N, K, generator=gen) > 0.5) & ~mask, scales=torch.rand(N, generator=gen).half(),
        offsets=torch.randn(N, generator=gen).half(), mask=mask,
        salient_codes=torch.randint(0, 256, (int(mask.sum()),), generator=gen), salient_scale=torch.rand(N).half(),
        salient_zero=torch.randint(0, 256, (N,), generator=gen).to(torch.uint8), salient_bits=8, paper_bits=1.7)


def uniform(gen, bits, group):
    ng = -(-K // group)
    return UniformFormat(torch.randint(0, 2 ** bits, (N, K), generator=gen), torch.rand(N, ng, generator=gen).half(),
                         torch.randint(0, 2 ** bits, (N, ng), generator=gen).to(torch.uint8), bits, group)


FORMATS = {
    "uniform-grouped": lambda g: uniform(g, 2, 32),
    "uniform-row": lambda g: uniform(g, 4, K),
    "dbllm": lambda g: bitplane(g, planes=2, group=32),
    "ptq161": lambda g: bitplane(g, group=K - 16, perm="mask", k_sal=16, in_scale=True),
    "one-group-index-perm": lambda g: bitplane(g, group=K - 8, perm="index", k_sal=8, in_scale=True, out_scale=True),
    "pbllm-sparse": lambda g: bitplane(g, group=K, sparse=True, out_scale=True),
    "permuted-groups": lambda g: bitplane(g, planes=2, group=16, perm="index", sparse=True),
    "masked": masked,
}
SPLITS = [(0, 32), (32, 96), (0, 48), (48, 96), (10, 60)]
REFUSED = {  # format -> column ranges its layout cannot be cut at
    "uniform-grouped": {(0, 48), (48, 96), (10, 60)},
    "dbllm": {(0, 48), (48, 96), (10, 60)},
    "permuted-groups": set(SPLITS),
}


def dense(meta, tensors):
    return format_from_meta(meta).from_tensors(meta, tensors).dequantize()


@pytest.mark.parametrize("name", FORMATS)
def test_rows_and_columns_are_exact_parts(name):
    fmt = FORMATS[name](torch.Generator().manual_seed(0))
    meta, tensors = fmt.meta(), fmt.tensors()
    whole = dense(meta, tensors)
    for start, stop in [(0, 24), (24, 48), (5, 17)]:
        assert torch.equal(dense(*take_rows(meta, tensors, start, stop)), whole[start:stop]), (start, stop)
    for start, stop in SPLITS:
        problem = column_split_problem(meta, start, stop)
        assert (problem is not None) == ((start, stop) in REFUSED.get(name, set())), (start, stop, problem)
        if problem is None:
            torch.testing.assert_close(dense(*take_columns(meta, tensors, start, stop)), whole[:, start:stop],
                                       rtol=0, atol=1e-6)


def test_refusals_say_why():
    fmt = FORMATS["permuted-groups"](torch.Generator().manual_seed(0))
    assert "permuted across several groups" in column_split_problem(fmt.meta(), 0, 48)
    fmt = FORMATS["dbllm"](torch.Generator().manual_seed(0))
    assert column_split_problem(fmt.meta(), 0, 48) == ("its groups of 32 input channels do not align with this "
                                                       "rank's channels 0..48")
