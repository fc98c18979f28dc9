"""Triton kernels against fp32 math on the same packed weights; on CPU through TRITON_INTERPRET=1."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates any kernel (conftest does it too)

triton = pytest.importorskip("triton")

import importlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from conftest_kernels import DTYPES, MS, TOL, case_id, make_format, reference, rel_err  # noqa: E402

from llmbin.kernels import triton as tb  # noqa: E402
from llmbin.kernels.cpu.layout import layer_layout  # noqa: E402
from llmbin.nn import QuantLinear  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRET and type(tb.K.bitplane_gemv_kernel).__name__ != "InterpretedFunction":
    importlib.reload(tb.K)  # kernels were decorated before TRITON_INTERPRET was set

# A covering subset of the KERNELS.md grid (every N, K, G, P and layer kind appears) that the
# interpreter runs in about a minute on 2 cores; on a GPU every case is cheap.
CASES = [
    (1, 32, 32, 1, "plain"), (7, 128, 32, 2, "ptq161"), (64, 544, 128, 1, "pbllm"), (257, 128, "K", 2, "nooffsets"),
    (7, 544, "K", 1, "ptq161"), (64, 32, "K", 2, "pbllm"), (1, 544, 32, 2, "nooffsets"), (257, 32, 128, 1, "plain"),
    (64, 128, 128, 2, "ptq161"), (7, 32, 128, 1, "nooffsets"), (257, 544, 32, 1, "plain"), (257, 32, 32, 2, "permuted"),
    (1, 128, "K", 1, "pbllm"),
]


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(tb, "POISON", True)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case):
    n, k, g, p, kind = case
    fmt = make_format(n, k, g, p, kind)
    module = QuantLinear.from_format(fmt).to(DEVICE)
    state, w = tb.prepare_state(module), fmt.dequantize().to(DEVICE)
    ms = MS if n * k <= 64 * 544 or not INTERPRET else (1, 3, 33)
    for m in ms:
        for dtype in DTYPES:
            x = torch.randn(m, k, device=DEVICE).to(dtype)  # fresh inputs every run
            err = rel_err(tb.triton_matmul(state, x), reference(w, x), w, x)
            assert err <= TOL[dtype], f"M={m} {dtype}: rel err {err:.2e}"


def test_dequantize_segment_matches_layout():
    fmt = make_format(50, 200, 48, 2, "ptq161")
    lay = layer_layout(fmt.meta(), fmt.tensors())
    for seg in lay.segments:
        words, scales = seg.words.to(DEVICE), seg.scales.to(DEVICE)
        offsets = None if seg.offsets is None else seg.offsets.to(DEVICE)
        dense = tb.dequantize_segment(words, scales, offsets, seg.wpg, torch.float32).cpu()
        bits = ((seg.words.long()[..., None] >> torch.arange(32)) & 1).flatten(-2).float()  # [P, N, KW*32]
        group = torch.arange(bits.shape[-1]) // (32 * seg.wpg)
        expect = (bits * seg.scales[..., group]).sum(0)
        if seg.offsets is not None:
            expect = expect + seg.offsets[:, group]
        assert torch.equal(dense, expect.T.contiguous())


def test_custom_op_registration():
    fmt = make_format(9, 64, 32, 2, "plain")
    seg = layer_layout(fmt.meta(), fmt.tensors()).segments[0]
    args = (seg.words.to(DEVICE), seg.scales.to(DEVICE), seg.offsets.to(DEVICE), seg.wpg)
    for m in (2, 17):
        torch.library.opcheck(tb.bitplane_gemm, (torch.randn(m, 64, device=DEVICE), *args),
                              test_utils=("test_schema", "test_faketensor"))


def test_selector_offers_triton_only_for_cuda():
    meta = make_format(8, 64, 32, 1, "plain").meta()
    assert "CUDA" in tb.TritonBackend().supports(meta, torch.device("cpu"), torch.float32)


def test_aot_compile_sm80_sm90_without_spills():
    """Every shipped kernel (heaviest launched variant) compiles for sm_80 and sm_90 with no spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", "llmbin.kernels.triton.aot", "80", "90"], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode and any(s in proc.stderr for s in ("ptxas", "cuobjdump", "No such file")):
        pytest.skip(f"triton cannot compile ahead of time here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {(r["kernel"], r["arch"]) for r in rows} >= {(k, a) for k in ("bitplane_gemv_kernel", "bitplane_gemm_kernel",
                                                                         "bitplane_dequant_kernel") for a in (80, 90)}
    spilled = [r for r in rows if r["spills"]]
    assert not spilled, spilled
