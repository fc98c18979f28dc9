"""The native CPU LUT kernel against fp32 math on the same packed weights (KERNELS.md tests)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from llmbin.kernels import select_backend
from llmbin.kernels import cpu
from llmbin.nn import QuantLinear

from conftest_kernels import DTYPES, MS, TOL, case_id, full_grid, make_format, reference, rel_err

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the cpu backend falls back to torch")


@pytest.fixture(scope="module")
def isas():
    ext = cpu.load_extension()  # the one-time build (cached across sessions)
    assert ext is not None, cpu.build_error()
    return [name for name, code in cpu.ISAS.items() if 0 < code <= ext.best_isa()]


@pytest.fixture(scope="module")
def many_token_isas(isas):
    """The table kernels' ISAs and the float32 dequantize + sgemm path, which runs on every CPU."""
    return isas + ["sgemm"]


@pytest.mark.parametrize("case", full_grid(), ids=case_id)
def test_matches_reference(case, many_token_isas):
    n, k, g, p, kind = case
    fmt = make_format(n, k, g, p, kind)
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize()
    for m in MS:
        for dtype in DTYPES:
            x = torch.randn(m, k).to(dtype)  # fresh inputs every run
            ref = reference(w, x)
            for isa in many_token_isas:
                err = rel_err(cpu.lut_matmul(state, x, isa, poison=True), ref, w, x)
                assert err <= TOL[dtype], f"{isa} M={m} {dtype}: rel err {err:.2e}"


def test_quantlinear_selects_cpu_and_matches_torch_backend(isas, monkeypatch):
    fmt = make_format(96, 160, 64, 2, "ptq161")
    bias = torch.randn(96)
    module = QuantLinear.from_format(fmt, bias)
    assert module.backend(torch.float32).name == "cpu"
    x = torch.randn(2, 5, 160)
    y = module(x)
    monkeypatch.setenv("LLMBIN_BACKEND", "torch")
    ref = QuantLinear.from_format(fmt, bias)(x)
    assert y.shape == (2, 5, 96)
    assert rel_err(y, ref) <= 1e-5
    xt = torch.randn(160, 4).T  # non-contiguous activations
    monkeypatch.delenv("LLMBIN_BACKEND")
    assert rel_err(module(xt), xt @ fmt.dequantize().T + bias) <= 1e-5


def test_token_chunks_and_every_isa_agree(many_token_isas):
    fmt = make_format(40, 4096, 128, 1, "pbllm")  # tables of 300 tokens exceed one 8 MB chunk
    state = cpu.prepare_state(QuantLinear.from_format(fmt))
    x = torch.randn(300, 4096)
    ref = reference(fmt.dequantize(), x)
    for isa in many_token_isas:
        assert rel_err(cpu.lut_matmul(state, x, isa, poison=True), ref) <= 1e-5


def test_rejects_what_it_cannot_run(isas, monkeypatch):
    monkeypatch.setenv("LLMBIN_CPU_EXACT", "0")
    backend = cpu.CpuBackend()
    meta = make_format(8, 64, 32, 1, "plain").meta()
    assert backend.supports(meta, torch.device("cpu"), torch.float32) is None
    assert "CPU" in backend.supports(meta, torch.device("cuda"), torch.float32)
    assert "bitplane and uniform" in backend.supports({**meta, "format": "masked"}, torch.device("cpu"), torch.float32)
    uniform = {"format": "uniform", "version": 1, "out_features": 8, "in_features": 64, "bits": 4, "group_size": 32}
    assert backend.supports(uniform, torch.device("cpu"), torch.float32) is None  # GPTQ/RTN layers stay packed
    monkeypatch.setenv("LLMBIN_CPU_EXACT", "1")
    assert "reference" in backend.supports(uniform, torch.device("cpu"), torch.float32)
    assert backend.supports({**uniform, "lut": True}, torch.device("cpu"), torch.float32) is None  # embeddings, head
    monkeypatch.setenv("LLMBIN_CPU_EXACT", "0")
    assert "bits" in backend.supports({**uniform, "bits": 16}, torch.device("cpu"), torch.float32)
    assert "float64" in backend.supports(meta, torch.device("cpu"), torch.float64)
    assert "planes" in backend.supports({**meta, "num_planes": 5}, torch.device("cpu"), torch.float32)


def test_isa_override(isas, monkeypatch):
    module = QuantLinear.from_format(make_format(8, 64, 32, 1, "plain"))
    monkeypatch.setenv("LLMBIN_CPU_ISA", "scalar")
    assert cpu.prepare_state(module).isa == cpu.ISAS["scalar"]
    monkeypatch.setenv("LLMBIN_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="LLMBIN_CPU_ISA"):
        cpu.prepare_state(module)


def test_build_failure_warns_once_and_falls_back_to_torch(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension: no usable compiler")

    from llmbin.kernels.cpu import build

    monkeypatch.setattr(build, "_ext", None)
    monkeypatch.setattr(build, "_error", None)
    monkeypatch.setattr(build, "_load_built", lambda *args: None)  # as on a machine that never built it
    monkeypatch.setattr(cpp_extension, "load", broken)
    meta = make_format(8, 64, 32, 1, "plain").meta()
    with pytest.warns(RuntimeWarning, match="torch backend"):
        reason = cpu.CpuBackend().supports(meta, torch.device("cpu"), torch.float32)
    assert "no usable compiler" in reason
    from llmbin.errors import LlmbinFallbackWarning

    explain = []
    with pytest.warns(LlmbinFallbackWarning, match="torch reference backend.*no usable compiler"):
        assert select_backend(meta, torch.device("cpu"), torch.float32, explain).name == "torch"
    assert any(line.startswith("cpu: ") and "no usable compiler" in line for line in explain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both warnings are one-time
        cpu.CpuBackend().supports(meta, torch.device("cpu"), torch.float32)
        assert select_backend(meta, torch.device("cpu"), torch.float32).name == "torch"


def test_import_does_not_build():
    code = ("import llmbin, llmbin.nn, llmbin.kernels, llmbin.kernels.cpu, llmbin.kernels.cpu.build as c, sys; "
            "assert c._ext is None and c._error is None; assert 'llmbin_cpu_lut' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bench_command_writes_rows(isas, tmp_path):
    from click.testing import CliRunner

    from llmbin.cli.bench import bench_command

    out = tmp_path / "k.json"
    result = CliRunner().invoke(bench_command, ["--shape", "64x256", "--batch", "1", "--batch", "4", "--planes", "1",
                                                "--budget", "0.05", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    cands = {(r["m"], r["candidate"]) for r in rows}
    assert {(m, c) for m in (1, 4) for c in ("F.linear fp32", "F.linear bf16", "cpu P1", "torch P1")} <= cands
    assert all(r["time_us"] > 0 and r["speedup_vs_fp32"] > 0 for r in rows)
    assert "| 64x256 | 1 | cpu P1 |" in result.output


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, 32), (4, 64), (4, -1), (5, 64), (6, -1), (8, -1), (8, 128)])
@pytest.mark.parametrize("n,k", [(7, 32), (257, 544), (64, 96)])
def test_uniform_layers_run_on_the_lut_kernel(bits, group, n, k, many_token_isas, monkeypatch):
    """Integer layers (GPTQ/RTN, packed embeddings and heads) as one bit plane per code bit, vs fp32 math (where the
    CPU lacks AVX512-VNNI or groups are not whole 32-column blocks; test_kernels_cpu_gemm.py tests the VNNI kernel)."""
    from llmbin.methods.rtn import rtn_format

    monkeypatch.setenv("LLMBIN_CPU_EXACT", "0")
    fmt = rtn_format(torch.randn(n, k), bits, group)
    module = QuantLinear.from_format(fmt)
    assert module.backend(torch.float32).name == "cpu"  # no dense copy: GPTQ/RTN layers stay packed
    state, w = cpu.prepare_state(module, bitplanes=True), fmt.dequantize()
    for m in (1, 3, 33):
        for dtype in DTYPES:
            x = torch.randn(m, k).to(dtype)
            ref = reference(w, x)
            for isa in many_token_isas:
                err = rel_err(cpu.lut_matmul(state, x, isa, poison=True), ref, w, x)
                assert err <= TOL[dtype], f"{isa} {bits}-bit g{group} M={m} {dtype}: rel err {err:.2e}"


@pytest.mark.parametrize("kind,p", [("ptq161", 1), ("pbllm", 1), ("plain", 2)])
def test_many_token_products_take_the_dequantize_gemm_path_by_themselves(kind, p, isas, monkeypatch):
    """From gemm_min_tokens tokens on, an unforced product leaves the tables: where the CPU lacks a bf16 brgemm it is
    the integer GEMM on AVX512-VNNI CPUs (int16 activations: relative error ~1e-5) and the float32 sgemm elsewhere
    (float32 rounding), sparse outliers added as a dense correction, for [batch, tokens, K] activations too; below
    the threshold it is the tables' result bit for bit."""
    ext = cpu.load_extension()
    if ext.gemm_supported():
        pytest.skip("this CPU runs many-token products as bf16 brgemm (test_kernels_cpu_gemm.py)")
    fmt = make_format(200, 352, 64, p, kind)  # 200 rows: a partial last row block
    state, w = cpu.prepare_state(QuantLinear.from_format(fmt)), fmt.dequantize()
    before, rounding = ext.gemm_min_tokens(), ext.int_gemm_rounding()
    ext.set_gemm_min_tokens(16)
    ext.set_int_gemm_rounding("int16")  # int16 throughout (the default's int8 channels: test_kernels_cpu_gemm.py)
    try:
        x = torch.randn(3, 20, 352)
        y = cpu.lut_matmul(state, x, poison=True)
        assert y.shape == (3, 20, 200)
        path = "igemm" if ext.uniform_isa() == "avx512-vnni" else "sgemm"
        tol = 1e-4 if path == "igemm" else 1e-5
        assert rel_err(y, reference(w, x.reshape(-1, 352)).reshape(3, 20, 200)) <= tol
        assert torch.equal(y, cpu.lut_matmul(state, x, path))
        assert not torch.equal(y, cpu.lut_matmul(state, x, isas[-1]))  # not the tables: another summation order
        few = torch.randn(15, 352)
        assert torch.equal(cpu.lut_matmul(state, few), cpu.lut_matmul(state, few, isas[-1]))
    finally:
        ext.set_gemm_min_tokens(before)
        ext.set_int_gemm_rounding(rounding)


def test_compiled_op_finds_the_plan_by_key_and_refuses_freed_ones(isas):
    import gc

    from torch._subclasses.fake_tensor import FakeTensorMode

    fmt = make_format(40, 96, 32, 1, "ptq161")  # 40 rows: not a whole number of 16-row blocks
    state = cpu.prepare_state(QuantLinear.from_format(fmt))
    x = torch.randn(2, 3, 96)
    y = torch.ops.llmbin_cpu.lut_matmul(x, state.key, 40, state.isa)
    assert y.shape == (2, 3, 40) and y.is_contiguous()
    assert torch.equal(y, cpu.lut_matmul(state, x))
    assert rel_err(y, reference(fmt.dequantize(), x)) <= 1e-5
    with FakeTensorMode() as mode:  # what torch.compile traces with
        fake = torch.ops.llmbin_cpu.lut_matmul(mode.from_tensor(x), state.key, 40, state.isa)
    assert fake.shape == (2, 3, 40) and fake.dtype == x.dtype
    with pytest.raises(RuntimeError, match="has 40 rows, not 41"):
        torch.ops.llmbin_cpu.lut_matmul(x, state.key, 41, state.isa)
    key = state.key
    del state
    gc.collect()
    with pytest.raises(RuntimeError, match="was freed"):
        torch.ops.llmbin_cpu.lut_matmul(x, key, 40, 0)


@pytest.mark.parametrize("kind,p", [("ptq161", 1), ("plain", 2), ("pbllm", 1)])
def test_one_token_matmuls_split_over_the_pool_give_the_same_bits(kind, p, isas):
    """Rows split over the spinning pool's threads (each building its own tables) = one thread, bit for bit."""
    ext = cpu.load_extension()
    fmt = make_format(1040, 1024, 64, p, kind)  # 65 row blocks: uneven shards
    state = cpu.prepare_state(QuantLinear.from_format(fmt))
    x = torch.randn(1, 1024)
    for isa in isas:
        one = cpu.lut_matmul(state, x, isa, poison=True)
        for n in (2, 3):
            runs = ext.gemv_pool_runs()
            with cpu.gemv_threads(n):
                assert ext.gemv_threads() == n
                split = cpu.lut_matmul(state, x, isa, poison=True)
                many = cpu.lut_matmul(state, torch.randn(5, 1024), isa)  # several tokens: OpenMP as before
            assert ext.gemv_pool_runs() == runs + 1, "the pool did not run"
            assert torch.equal(split, one), f"{isa}, {n} threads"
            assert many.shape == (5, 1040)
        assert rel_err(one, reference(fmt.dequantize(), x)) <= TOL[torch.float32]
    assert ext.gemv_threads() == 1


def test_pool_wakes_after_its_helpers_went_to_sleep(isas):
    import time

    ext = cpu.load_extension()
    fmt = make_format(1024, 512, 64, 1, "plain")
    state = cpu.prepare_state(QuantLinear.from_format(fmt))
    x = torch.randn(1, 512)
    one = cpu.lut_matmul(state, x)
    with cpu.gemv_threads(2):
        for _ in range(3):
            runs = ext.gemv_pool_runs()
            time.sleep(0.02)  # helpers stop spinning after ~5 ms and block
            assert torch.equal(cpu.lut_matmul(state, x), one)
            assert ext.gemv_pool_runs() == runs + 1


def test_pools_of_several_threads_at_once_stay_exact(isas):
    """Python threads decoding at once, each with its own thread count (shard counts below and above the pool's
    size, changing between calls): every one-token product equals the one-thread result bit for bit, and each
    thread's setting and pool are its own."""
    import threading

    ext = cpu.load_extension()
    fmt = make_format(1040, 1024, 64, 1, "plain")
    state = cpu.prepare_state(QuantLinear.from_format(fmt))
    xs = [torch.randn(1, 1024, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = [cpu.lut_matmul(state, x) for x in xs]
    errors, seen = [], {}

    def worker(k):
        try:
            runs = ext.gemv_pool_runs()
            for step in range(40):
                n = 1 + (k + step) % 3  # 1, 2 or 3 threads: the pool grows while the other threads use theirs
                with cpu.gemv_threads(n):
                    if ext.gemv_threads() != n:
                        errors.append(f"thread {k} sees {ext.gemv_threads()} threads, set {n}")
                    for x, want in zip(xs, expected):
                        if not torch.equal(cpu.lut_matmul(state, x), want):
                            errors.append(f"thread {k} step {step}: {n} threads differ")
            seen[k] = (ext.gemv_pool_runs() - runs, ext.gemv_pool_helpers(), ext.gemv_threads())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a decoding thread hung"
    assert not errors, errors[:5]
    for k, (runs, helpers, setting) in seen.items():
        assert runs > 0 and helpers == 2 and setting == 1, (k, runs, helpers, setting)  # own pool, restored setting
    assert ext.gemv_threads() == 1  # the main thread's setting was never touched


def test_a_forked_child_decodes_with_a_pool_of_its_own(tmp_path):
    """After fork() the child has none of the parent's helpers: its split products must still run (no hang)."""
    import subprocess
    import sys

    code = """
import os, sys, torch
from llmbin.kernels import cpu
from llmbin.nn import QuantLinear
sys.path.insert(0, sys.argv[1])
from conftest_kernels import make_format
fmt = make_format(1040, 1024, 64, 1, "plain")
state = cpu.prepare_state(QuantLinear.from_format(fmt))
x = torch.randn(1, 1024)
with cpu.gemv_threads(2):
    parent = cpu.lut_matmul(state, x)  # the parent's helpers now exist
    pid = os.fork()
    if pid == 0:
        ok = torch.equal(cpu.lut_matmul(state, x), parent) and cpu.load_extension().gemv_pool_runs() >= 1
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0"


def test_a_killed_build_does_not_hang_the_next_one(tmp_path):
    """A build killed mid-way leaves torch's `lock` file; the next process must clear it, not wait forever."""
    import shutil
    import subprocess
    import sys

    from llmbin.kernels.cpu import build

    assert cpu.load_extension() is not None, cpu.build_error()
    built = build.cache_dir()
    copy = tmp_path / "cache" / "torch_extensions" / built.name
    shutil.copytree(built, copy, ignore=shutil.ignore_patterns("lock", "llmbin-build.lock"))
    (copy / "lock").write_text("")  # what a SIGKILLed build leaves
    env = {**__import__("os").environ, "LLMBIN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", "from llmbin.kernels.cpu import load_extension as l; "
                           "print(l() is not None)"], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]
    assert "left by a build that was killed" in proc.stderr
    assert not (copy / "lock").exists()


def test_a_built_library_is_imported_without_torchs_build_step(tmp_path):
    """Another venv with the same torch build (its headers at another path) imports the library already built instead
    of letting ninja rebuild it; a stamp from another torch build or other flags means: build."""
    import shutil
    import subprocess
    import sys

    from llmbin.kernels.cpu import build

    assert cpu.load_extension() is not None, cpu.build_error()
    copy = tmp_path / "cache" / "torch_extensions" / build.cache_dir().name
    shutil.copytree(build.cache_dir(), copy, ignore=shutil.ignore_patterns("lock", "llmbin-build.lock"))
    env = {**__import__("os").environ, "LLMBIN_CACHE": str(tmp_path / "cache")}
    script = ("import torch.utils.cpp_extension as c\n"
              "def refuse(*a, **k): raise RuntimeError('torch load was called')\n"
              "c.load = refuse\n"
              "from llmbin.kernels.cpu import load_extension, build_error\n"
              "ext = load_extension()\n"
              "print(ext is not None and hasattr(ext, 'Plan'), build_error())\n")
    run = lambda: subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    proc = run()
    assert proc.returncode == 0 and proc.stdout.split()[0] == "True", proc.stdout + proc.stderr[-2000:]
    (copy / build.STAMP).write_text((copy / build.STAMP).read_text().replace(" -O3 ", " -O2 "))
    proc = run()
    assert proc.stdout.startswith("False") and "torch load was called" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_the_native_plan_refuses_indices_out_of_range():
    """Defence in depth: even if a caller skips loading's validation, the C++ plan checks every index it will read
    through (gather index, sparse columns and row pointers) and raises instead of reading out of bounds."""
    from llmbin.kernels.cpu.layout import layer_layout

    ext = cpu.load_extension()
    fmt = make_format(40, 96, 32, 1, "pbllm")
    module = QuantLinear.from_format(fmt)
    buffers = {n: b.clone() for n, b in module.named_buffers(recurse=False)}
    lay = layer_layout(module.meta, buffers)
    nb = -(-lay.out_features // cpu.ROWS)
    segs = lay.segments
    from llmbin.kernels.cpu.backend import _interleave

    def plan(src, sparse):
        offsets = [torch.empty(0) if s.offsets is None else _interleave(s.offsets[None], nb)[:, :, 0] for s in segs]
        return ext.Plan(src.int(), lay.gscale, [_interleave(s.words, nb) for s in segs],
                        [_interleave(s.scales, nb) for s in segs], offsets, [v for s in segs for v in (s.ng, s.wpg)],
                        *sparse, lay.out_features, lay.in_features, lay.salient_last)

    assert lay.sparse is not None
    plan(lay.src, lay.sparse)  # the valid one builds
    bad_src = lay.src.clone()
    bad_src[3] = 10**6
    with pytest.raises(RuntimeError, match="gather index"):
        plan(bad_src, lay.sparse)
    values, cols, rowptr = lay.sparse
    bad_cols = cols.clone()
    bad_cols[0] = -5
    with pytest.raises(RuntimeError, match="sparse column index"):
        plan(lay.src, (values, bad_cols, rowptr))
    bad_rowptr = rowptr.clone()
    bad_rowptr[-1] += 1
    with pytest.raises(RuntimeError, match="row pointers"):
        plan(lay.src, (values, cols, bad_rowptr))
