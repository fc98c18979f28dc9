"""Many-token products (dequantize + bf16 brgemm, dequant_gemm.h) and uniform layers on the CPU backend, against
float64 math on the format's own dense weights (fmt.dequantize()).

The stated tolerance of the GEMM path: weights and gathered activations are rounded to bf16 (relative 2^-9 each),
products and sums are float32, so elementwise |y - exact| <= (2^-8 + K 2^-23) * (|x| @ |w|^T). The lookup-table
path keeps float32 throughout (test_kernels_cpu.py's 1e-5)."""
from __future__ import annotations

import shutil

import pytest
import torch

from llmbin.kernels import cpu, select_backend
from llmbin.nn import QuantLinear

from conftest_kernels import make_format, random_uniform, rel_err

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the cpu backend falls back to torch")


@pytest.fixture(autouse=True)
def fast_paths(monkeypatch):
    monkeypatch.setenv("LLMBIN_CPU_EXACT", "0")  # conftest.py keeps the rest of the suite on the float32 paths


@pytest.fixture
def gemm(ext):
    if not ext.gemm_supported():
        pytest.skip("this CPU has no bf16 brgemm: many-token products take the integer GEMM or the float32 sgemm")
    before = ext.gemm_min_tokens()
    ext.set_gemm_min_tokens(16)  # the default, whatever the process was configured with
    yield ext
    ext.set_gemm_min_tokens(before)


def gemm_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (2.0 ** -8 + w.shape[1] * 2.0 ** -23) * (x.double().abs() @ w.double().abs().T)


FORMATS = [("bitplane", (64, 128, 32, 1, "plain")), ("bitplane", (257, 544, 128, 2, "ptq161")),
           ("bitplane", (7, 32, 32, 1, "pbllm")), ("bitplane", (100, 160, 64, 2, "permuted")),
           ("bitplane", (33, 544, "K", 1, "nooffsets")), ("uniform", (96, 160, 4, 32)), ("uniform", (40, 544, 3, 128)),
           ("uniform", (17, 96, 8, 64)), ("uniform", (80, 256, 2, 128))]


def build(kind, args):
    return make_format(*args) if kind == "bitplane" else random_uniform(*args)


@pytest.mark.parametrize("kind,args", FORMATS, ids=[f"{k}-{'-'.join(map(str, a))}" for k, a in FORMATS])
def test_gemm_path_within_the_stated_bound(kind, args, gemm):
    fmt = build(kind, args)
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize()
    for m in (1, 5, 16, 33, 300):
        x = torch.randn(m, fmt.in_features)
        y = cpu.lut_matmul(state, x, "gemm", poison=True)  # every output written: NaN-filled first
        assert torch.isfinite(y).all()
        excess = (y.double() - x.double() @ w.double().T).abs() - gemm_bound(x, w)
        assert excess.max() <= 0, f"M={m}: {excess.max():.3e} above the bound"


@pytest.mark.parametrize("kind,args", FORMATS[:2] + FORMATS[5:7], ids=lambda a: str(a))
def test_tokens_pick_the_path(kind, args, gemm):
    """Below the threshold the table kernel (float32 exact), from it the GEMM path, bit for bit the forced one."""
    fmt = build(kind, args)
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize()
    few, many = torch.randn(gemm.gemm_min_tokens() - 1, fmt.in_features), torch.randn(gemm.gemm_min_tokens(), fmt.in_features)
    if kind == "uniform" and gemm.uniform_supported():  # the integer-code kernel: its own bound
        assert ((cpu.lut_matmul(state, few).double() - few.double() @ w.double().T).abs() <= int16_bound(few, w)).all()
    else:
        assert rel_err(cpu.lut_matmul(state, few), few @ w.T, w, few) <= 1e-5
    assert torch.equal(cpu.lut_matmul(state, many), cpu.lut_matmul(state, many, "gemm"))
    assert not torch.equal(cpu.lut_matmul(state, many), cpu.lut_matmul(state, many, "avx512"))  # not the tables


def test_threshold_and_env(gemm, monkeypatch):
    before = gemm.gemm_min_tokens()
    try:
        gemm.set_gemm_min_tokens(4)
        assert gemm.gemm_min_tokens() == 4
        assert "1-3 tokens" in cpu.backend.many_token_paths(gemm)
    finally:
        gemm.set_gemm_min_tokens(before)


def test_gemm_batch_shapes_and_dtypes(gemm):
    fmt = make_format(96, 160, 64, 2, "ptq161")
    module = QuantLinear.from_format(fmt, torch.randn(96))
    w = fmt.dequantize()
    x = torch.randn(3, 40, 160)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        y = module(x.to(dtype))
        assert y.shape == (3, 40, 96) and y.dtype == dtype
        exact = x.to(dtype).double() @ w.double().T + module.bias.double()
        slack = gemm_bound(x.to(dtype).reshape(-1, 160), w).reshape(3, 40, 96) + 2.0 ** -7 * exact.abs() * (dtype != torch.float32)
        assert ((y.double() - exact).abs() <= slack + 1e-6).all(), dtype


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, 128), (8, 32)])
def test_uniform_layers_run_packed_on_cpu(bits, group, ext):
    """GPTQ/RTN layers are no longer refused (no dense copy at load): the integer-code kernel within its bound (or
    the table kernel over bit planes within float32 rounding, where the CPU has no AVX512-VNNI)."""
    fmt = random_uniform(72, 256, bits, group, seed=bits)
    module = QuantLinear.from_format(fmt)
    assert select_backend(fmt.meta(), torch.device("cpu"), torch.float32).name == "cpu"
    x = torch.randn(3, 256)
    w = fmt.dequantize()
    assert ((module(x).double() - x.double() @ w.double().T).abs() <= int16_bound(x, w)).all()
    assert not any(t.numel() == 72 * 256 and t.dtype == torch.float32 for t in module.buffers())


def span_amax(block_amax: torch.Tensor, span: int, q8_blocks: int = 0) -> torch.Tensor:
    """Per block, the max over the blocks that share its activation scale in the integer GEMM (int_gemm.h): spans of
    `span` blocks, the int8 ones counted from block 0, the int16 ones from q8_blocks."""
    kb = block_amax.shape[-1]
    ids = [b // span if b < q8_blocks else kb + (b - q8_blocks) // span for b in range(kb)]
    ids = torch.tensor(ids)
    out = torch.zeros_like(block_amax)
    for i in ids.unique():
        cols = ids == i
        out[:, cols] = block_amax[:, cols].amax(-1, keepdim=True)
    return out


def int16_bound(x: torch.Tensor, w: torch.Tensor, levels: int = 65534, span: int = 1) -> torch.Tensor:
    """The integer-code kernel's stated tolerance: activations rounded to int16 per block of 32 (|error| <= max|x| of
    the block / 65534; int8: / 254), exact int32 sums, float32 after: sum over blocks of that error x sum|w| + float32
    rounding. The integer GEMM shares one scale over `span` blocks: the max is the span's."""
    k = x.shape[1]
    kp = -(-k // 32) * 32
    xb = span_amax(torch.nn.functional.pad(x.double().abs(), (0, kp - k)).view(x.shape[0], -1, 32).amax(-1),
                   span) / levels
    wb = torch.nn.functional.pad(w.double().abs(), (0, kp - k)).view(w.shape[0], -1, 32).sum(-1)
    return xb @ wb.T + k * 2.0 ** -23 * (x.double().abs() @ w.double().abs().T)


@pytest.mark.parametrize("bits,group,n,k", [(2, 32, 40, 96), (3, 64, 33, 200), (4, 128, 72, 256), (5, 64, 100, 576),
                                            (8, 32, 17, 64), (4, 128, 20, 100)])
def test_integer_code_kernel_within_the_stated_bound(bits, group, n, k, ext):
    if not ext.uniform_supported():
        pytest.skip("no AVX2 or AVX512-VNNI: uniform layers run on the lookup tables over bit planes")
    fmt = random_uniform(n, k, bits, group, seed=bits + k)
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize()
    assert type(state.plan).__name__ == "UniformPlan"
    isas = ["scalar", "avx2"] + (["avx512"] if ext.uniform_isa() == "avx512-vnni" else [])
    for m in (1, 2, 7):
        x = torch.randn(m, k) * torch.rand(1, k) * 4  # blocks of unequal size: the per-block scale matters
        exact = x.double() @ w.double().T
        for isa in isas:
            y = cpu.lut_matmul(state, x, isa, poison=True)
            assert ((y.double() - exact).abs() <= int16_bound(x, w)).all(), (isa, m)
        # the many-token float32 path (dequantize + sgemm, every CPU): the reference's weights up to the rounding of
        # q * s - z * s, summed in another order
        y = cpu.lut_matmul(state, x, "sgemm", poison=True)
        assert rel_err(y, x @ w.T, w, x) <= 1e-5, m


@pytest.mark.parametrize("bits,n", [(4, 1040), (5, 592), (8, 272)])
def test_integer_code_kernel_split_over_the_pool_gives_the_same_bits(bits, n, ext):
    """One token's rows split over the spinning pool (65, 37, 17 row blocks: uneven shares, a last pass of 1) = one
    thread, bit for bit, within the stated bound of float64 math."""
    if ext.uniform_isa() not in ("avx512-vnni", "avx2"):
        pytest.skip("no AVX2 or AVX512-VNNI: uniform layers run on the lookup tables over bit planes")
    fmt = random_uniform(n, 512, bits, 128, seed=n)
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize()
    x = torch.randn(1, 512) * torch.rand(1, 512) * 4
    one = cpu.lut_matmul(state, x, poison=True)
    assert ((one.double() - x.double() @ w.double().T).abs() <= int16_bound(x, w)).all()
    for threads in (2, 3):
        runs = ext.gemv_pool_runs()
        with cpu.gemv_threads(threads):
            split = cpu.lut_matmul(state, x, poison=True)
        assert ext.gemv_pool_runs() == runs + 1, "the pool did not run"
        assert torch.equal(split, one), threads


def test_integer_code_kernel_takes_many_tokens_to_a_gemm_without_bf16(ext):
    """Without a bf16 brgemm, from the token threshold on a uniform layer runs as the integer GEMM (AVX512-VNNI) or
    dequantize + sgemm (AVX2), bit for bit the forced path; below it, the integer kernel."""
    if not ext.uniform_supported() or ext.gemm_supported():
        pytest.skip("needs the integer kernel on a CPU without AVX512-BF16")
    fmt = random_uniform(48, 320, 4, 64, seed=3)
    state = cpu.prepare_state(QuantLinear.from_format(fmt))
    before = ext.gemm_min_tokens()
    ext.set_gemm_min_tokens(16)
    try:
        many = torch.randn(16, 320)
        path = "igemm" if ext.uniform_isa() == "avx512-vnni" else "sgemm"
        assert torch.equal(cpu.lut_matmul(state, many), cpu.lut_matmul(state, many, path))
        vector = "avx2" if ext.uniform_isa() == "avx2" else "avx512"
        assert torch.equal(cpu.lut_matmul(state, many[:15]), cpu.lut_matmul(state, many[:15], vector))
    finally:
        ext.set_gemm_min_tokens(before)


@pytest.mark.parametrize("bits,group,n,k", [(4, 64, 20, 96), (5, 64, 37, 160), (8, 32, 16, 64)])
def test_bf16_tile_fill_holds_the_format_weights(bits, group, n, k, ext):
    """The brgemm path's weight tiles (dequant_gemm.h's layout), read back: every weight is the format's own value
    q * s - z * s rounded to bf16 (one rounding after a fused multiply-add: within one bf16 step of the reference's
    float32 value). Runs on any CPU with AVX512-BF16, where the brgemm itself may be missing (no AMX)."""
    if not ext.uniform_supported() or not ext.bf16_fill_supported():
        pytest.skip("needs the integer kernel and AVX512-BF16")
    fmt = random_uniform(n, k, bits, group, seed=bits * k)
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize().float()
    kp = -(-k // 32) * 32
    for nb in range(-(-n // 16)):
        tile = state.plan.block_tile(nb)  # [kp / 2 pairs, 64 columns, 2]
        got = tile[:, :16].permute(1, 0, 2).reshape(16, kp).float()[:, :k]
        rows = w[nb * 16:(nb + 1) * 16]
        want = torch.nn.functional.pad(rows, (0, 0, 0, 16 - rows.shape[0]))
        step = want.abs() * 2.0 ** -8 + 1e-30
        assert ((got - want).abs() <= step).all(), (bits, nb)


@pytest.fixture
def igemm(ext):
    if ext.uniform_isa() != "avx512-vnni":
        pytest.skip("the integer GEMM needs AVX512-VNNI")
    before, rounding = ext.gemm_min_tokens(), ext.int_gemm_rounding()
    ext.set_gemm_min_tokens(16)
    ext.set_int_gemm_rounding("int16")  # the auto path as int16 throughout; tests of the default opt back in
    yield ext
    ext.set_gemm_min_tokens(before)
    ext.set_int_gemm_rounding(rounding)


def gathered_bound(x: torch.Tensor, w: torch.Tensor, module, levels: int, span: int = 1,
                   q8_blocks: int = 0) -> torch.Tensor:
    """int16_bound for a bit-plane layer, whose blocks of 32 hold gathered slots: slot s carries channel src[s] times
    gscale[s] (perm, in_scale, PTQ1.61's salient block last, padding), so its activation is rounded by its block's
    max |x[src] gscale| / levels and weighs w[:, src[s]] / gscale[s]; the PB-LLM sparse correction runs in float32
    on the channels as stored. Every channel has one slot (checked), so the slot weights are the dense ones."""
    from llmbin.kernels.cpu.layout import layer_layout

    lay = layer_layout(module.meta, {n: b for n, b in module.named_buffers(recurse=False) if not n.startswith("_")})
    src, gscale, valid = lay.src.clamp_min(0), lay.gscale.double(), lay.src >= 0
    assert torch.equal(torch.sort(lay.src[valid]).values, torch.arange(w.shape[1])), "a channel in two slots"
    dense = w.double()
    if lay.sparse is not None:
        values, cols, rowptr = lay.sparse
        rows = torch.repeat_interleave(torch.arange(w.shape[0]), rowptr.long().diff())
        dense = dense.index_put((rows, cols.long()), -values.double(), accumulate=True)  # the bit planes' part
    xs = (x.double()[:, src] * gscale).abs() * valid
    ws = (dense[:, src] / torch.where(valid, gscale, 1.0)).abs() * valid
    xb = span_amax(xs.view(x.shape[0], -1, 32).amax(-1), span, q8_blocks) / levels
    wb = ws.view(w.shape[0], -1, 32).sum(-1)
    return xb @ wb.T + 2 * w.shape[1] * 2.0 ** -23 * (x.double().abs() @ w.double().abs().T)


@pytest.mark.parametrize("kind,args", FORMATS, ids=[f"{k}-{'-'.join(map(str, a))}" for k, a in FORMATS])
def test_integer_gemm_within_the_stated_bound(kind, args, igemm):
    """The many-token integer GEMM (int_gemm.h) against float64 math on the format's dense weights, elementwise within
    the integer kernel's bound (same activations, same sums): int16_bound for uniform layers, gathered_bound for
    bit-plane layers, whose slots hold gathered and scaled activations. Unforced, from the token threshold on, it is
    what a CPU without a bf16 brgemm runs. igemm8 (int8 activations, LLMBIN_CPU_GEMM_INT8=1) at its own rounding."""
    fmt = build(kind, args)
    module = QuantLinear.from_format(fmt)
    state, w = cpu.prepare_state(module), fmt.dequantize()
    k = fmt.in_features
    gen = torch.Generator().manual_seed(k)
    for m in (1, 5, 16, 37, 300):
        x = torch.randn(m, k, generator=gen) * torch.rand(1, k, generator=gen) * 4  # blocks of unequal size
        exact = x.double() @ w.double().T
        for isa, levels in (("igemm", 65534), ("igemm8", 254)):
            y = cpu.lut_matmul(state, x, isa, poison=True)
            span = igemm.gemm_span()
            bound = (int16_bound(x, w, levels, span) if kind == "uniform"
                     else gathered_bound(x, w, module, levels, span))
            assert ((y.double() - exact).abs() <= bound).all(), (isa, m)
            if isa == "igemm" and m >= 16 and not igemm.gemm_supported():
                assert torch.equal(y, cpu.lut_matmul(state, x))
    igemm.set_int_gemm_rounding("int8")
    try:
        x = torch.randn(20, k)
        assert torch.equal(cpu.lut_matmul(state, x, "igemm8"), cpu.lut_matmul(state, x, "auto" if not
                           igemm.gemm_supported() else "igemm8"))
    finally:
        igemm.set_int_gemm_rounding("int16")


def test_integer_gemm_does_not_depend_on_the_thread_count(igemm):
    fmt = make_format(200, 544, 128, 2, "ptq161")
    state = cpu.prepare_state(QuantLinear.from_format(fmt))
    x = torch.randn(45, 544)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cpu.lut_matmul(state, x, "igemm")
        torch.set_num_threads(2)
        assert torch.equal(one, cpu.lut_matmul(state, x, "igemm"))
    finally:
        torch.set_num_threads(threads)


def test_int8_on_binarized_channels_only(igemm):
    """LLMBIN_CPU_GEMM_INT8=binarized (the default): int8 activations on a layer's binarized channels, int16 on its
    salient block.
    Told apart by activations on one side only: on the salient channels alone the result is the int16 GEMM's bit
    for bit (and not the int8 GEMM's), on the binarized channels alone the int8 GEMM's bit for bit; with outliers on
    the salient channels it is within igemm8's bound and closer to float64 than int8 everywhere. Layers without a
    salient block (an 8-bit layer as bit planes too: two 4-plane segments, shaped like one), and the forced igemm
    path, keep int16."""
    if igemm.gemm_supported():
        pytest.skip("this CPU's auto path is the bf16 brgemm")
    from llmbin.kernels.cpu.layout import layer_layout

    fmt = make_format(257, 544, 128, 1, "ptq161")
    mod = QuantLinear.from_format(fmt)
    state, w = cpu.prepare_state(mod), fmt.dequantize()
    lay = layer_layout(mod.meta, dict(mod.named_buffers()))
    first = lay.segments[0].ng * lay.segments[0].wpg * 32
    salient = torch.zeros(fmt.in_features, dtype=torch.bool)
    salient[lay.src[first:][lay.src[first:] >= 0]] = True
    assert 0 < salient.sum() < fmt.in_features
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, fmt.in_features, generator=g) * (1 + 40 * salient * torch.rand(fmt.in_features, generator=g))
    plain = make_format(64, 128, 32, 1, "plain")
    plain_state, xp = cpu.prepare_state(QuantLinear.from_format(plain)), torch.randn(20, 128, generator=g)
    uniform = cpu.prepare_state(QuantLinear.from_format(random_uniform(48, 320, 4, 64, seed=3)))
    xu = torch.randn(20, 320, generator=g)
    eight = cpu.prepare_state(QuantLinear.from_format(random_uniform(40, 544, 8, 128, seed=4)), bitplanes=True)
    x8 = torch.randn(20, 544, generator=g)
    int16_before = cpu.lut_matmul(state, x)
    igemm.set_int_gemm_rounding("binarized")
    try:
        on_salient, on_binarized = x * salient, x * ~salient
        y = cpu.lut_matmul(state, on_salient)
        assert torch.equal(y, cpu.lut_matmul(state, on_salient, "igemm"))
        assert not torch.equal(y, cpu.lut_matmul(state, on_salient, "igemm8"))
        assert torch.equal(cpu.lut_matmul(state, on_binarized), cpu.lut_matmul(state, on_binarized, "igemm8"))
        exact = (x.double() @ w.double().T).float()
        mixed = cpu.lut_matmul(state, x, poison=True)
        assert not torch.equal(mixed, int16_before)
        bound = gathered_bound(x, w, mod, 254, igemm.gemm_span(), first // 32)
        assert ((mixed.double() - x.double() @ w.double().T).abs() <= bound).all()
        assert rel_err(mixed, exact, w, x) < rel_err(cpu.lut_matmul(state, x, "igemm8"), exact, w, x)
        assert torch.equal(cpu.lut_matmul(state, x, "igemm"), int16_before)
        assert torch.equal(cpu.lut_matmul(plain_state, xp), cpu.lut_matmul(plain_state, xp, "igemm"))
        assert torch.equal(cpu.lut_matmul(uniform, xu), cpu.lut_matmul(uniform, xu, "igemm"))
        assert torch.equal(cpu.lut_matmul(eight, x8), cpu.lut_matmul(eight, x8, "igemm"))
    finally:
        igemm.set_int_gemm_rounding("int16")


def test_activation_rounding_comes_from_the_environment(ext, monkeypatch, capsys):
    """A fresh process rounds binarized channels to int8 by default; LLMBIN_CPU_GEMM_INT8 picks 0 / 1 / binarized,
    anything else is refused naming the choices; the path line printed says which rounding runs."""
    import subprocess
    import sys

    fresh = subprocess.run([sys.executable, "-c", "from llmbin.kernels.cpu.build import load_extension as l; e = l(); "
                            "print(e.int_gemm_rounding())"], capture_output=True, text=True,
                           env={k: v for k, v in __import__("os").environ.items() if k != "LLMBIN_CPU_GEMM_INT8"})
    assert fresh.stdout.split() == ["binarized"], fresh.stderr[-500:]
    saved = ext.int_gemm_rounding(), ext.gemm_min_tokens()
    monkeypatch.delenv("LLMBIN_CPU_GEMM_MIN_TOKENS", raising=False)
    ext.set_gemm_min_tokens(16)  # the path line names the GEMM's rounding only where many-token products reach it
    try:
        for value, want, said in (("0", "int16", "int16 activations"), ("1", "int8", "int8 activations"),
                                  ("binarized", "binarized", "binarized channels")):
            configure(monkeypatch, ext, "LLMBIN_CPU_GEMM_INT8", value)
            assert ext.int_gemm_rounding() == want, value
            if ext.uniform_isa() == "avx512-vnni" and not ext.gemm_supported():
                assert said in capsys.readouterr().err, value
        with pytest.raises(ValueError, match="binarized"):
            configure(monkeypatch, ext, "LLMBIN_CPU_GEMM_INT8", "2")
    finally:
        ext.set_int_gemm_rounding(saved[0])
        ext.set_gemm_min_tokens(saved[1])


def configure(monkeypatch, ext, name: str, value: str) -> None:
    """The extension configured from the environment as a fresh process would be (backend._configure runs once)."""
    from llmbin.kernels.cpu import backend

    monkeypatch.setenv(name, value)
    monkeypatch.setattr(backend, "_paths_said", False)
    backend._configure(ext)


def test_gemm_span_comes_from_the_environment(ext, monkeypatch, capsys):
    """LLMBIN_CPU_GEMM_SPAN sets how many blocks of 32 share an activation scale in the integer GEMM (default 4);
    out of 1..8 it is refused naming the range (int16 sums of more blocks could leave int32); the path line says the
    span."""
    saved = ext.gemm_span(), ext.gemm_min_tokens()
    assert saved[0] == 4
    monkeypatch.delenv("LLMBIN_CPU_GEMM_MIN_TOKENS", raising=False)
    ext.set_gemm_min_tokens(16)
    try:
        for value in ("1", "8"):
            configure(monkeypatch, ext, "LLMBIN_CPU_GEMM_SPAN", value)
            assert ext.gemm_span() == int(value)
            if ext.uniform_isa() == "avx512-vnni" and not ext.gemm_supported():
                assert f"LLMBIN_CPU_GEMM_SPAN={value}" in capsys.readouterr().err
        for bad in ("0", "9", "16", "x"):
            with pytest.raises(ValueError, match="1 to 8"):
                configure(monkeypatch, ext, "LLMBIN_CPU_GEMM_SPAN", bad)
    finally:
        ext.set_gemm_span(saved[0])
        ext.set_gemm_min_tokens(saved[1])


@pytest.mark.parametrize("isa,top,small", [("igemm", 32767, 20000), ("igemm8", 127, 5)])
def test_gemm_blocks_of_a_span_share_one_scale(isa, top, small, igemm):
    """Blocks 1-3 of whole numbers beside a block 0 whose max is the rounding's top: on a span of 4 they share block
    0's scale, exactly 1, so every activation is exact and the GEMM equals float64 up to float32 rounding; rounded on
    their own max (span 1) they are not. Within the stated bound at both spans."""
    fmt = random_uniform(32, 256, 4, 128, seed=9)  # 8 blocks of 32: spans [0, 4) and [4, 8) at span 4
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize()
    g = torch.Generator().manual_seed(2)
    x = torch.zeros(20, 256)
    x[:, :32] = torch.randint(-top, top + 1, (20, 32), generator=g).float()
    x[:, 0] = top
    x[:, 32:128] = torch.randint(-small, small + 1, (20, 96), generator=g).float()
    x[:, 32] = small
    exact = x.double() @ w.double().T
    rounding = 2e-7 * (x.double().abs() @ w.double().abs().T)  # float32 conversions and sums of exact integers
    try:
        igemm.set_gemm_span(4)
        four = cpu.lut_matmul(state, x, isa)
        igemm.set_gemm_span(1)
        one = cpu.lut_matmul(state, x, isa)
    finally:
        igemm.set_gemm_span(4)
    assert ((four.double() - exact).abs() <= rounding).all()
    assert ((one.double() - exact).abs() > rounding).any()
    for span, y in ((4, four), (1, one)):
        assert ((y.double() - exact).abs() <= int16_bound(x, w, 2 * top, span)).all(), span
