"""Kernel speed table (BENCH.md "Speed protocol"; `llmbin bench`, decode speed: decode_bench.py).

 for each shape N x K and batch M, every llmbin backend that can run here on the same
random packed weights, against F.linear in float32 and bfloat16 (CUDA: float16 and bfloat16), in the
same process. Candidates are timed round-robin, one call each per round, so a noisy neighbour slows
all of them alike; the median over rounds is reported with bytes moved and GB/s. CPU timings are
hot-cache (weights stay in the caches between calls), as F.linear's are.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..formats import BitPlaneFormat, SparseCorrection
from ..formats.bitplane import mask_order
from ..host.environment import cpu_name
from ..host.files import atomic_write_text
from ..kernels import BACKENDS, load_optional_backends
from ..nn import QuantLinear
from .decode_bench import format_decode

BENCH_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (576, 576), (192, 576), (1536, 576), (576, 1536)]
BENCH_BATCHES = [1, 4, 16, 64]


def random_bitplane(n: int, k: int, planes: int = 1, group: int = 128, *, offsets: bool = True,
                    in_scale: bool = False, out_scale: bool = False, perm: bool | str = False, k_salient: int = 0,
                    sparse: float = 0.0, generator: torch.Generator | None = None) -> BitPlaneFormat:
    """A random but well-formed BitPlaneFormat (kernel tests and benches).

    perm: True for a random permutation (stored as int32 indices), "mask" for PTQ1.61's order (binarized
    channels ascending, then the salient ones; stored as a salient bitmap)."""
    g, f16 = generator, torch.float16
    k_bin = k - k_salient
    ng = -(-k_bin // group)
    fmt = BitPlaneFormat(
        planes=torch.rand(planes, n, k_bin, generator=g) < 0.5,
        scales=(torch.rand(planes, n, ng, generator=g) * 0.1 + 0.01).to(f16),
        offsets=(torch.randn(n, ng, generator=g) * 0.02).to(f16) if offsets else None,
        group_size=group, in_features=k, paper_bits=float(planes),
        in_scale=(torch.rand(k, generator=g) + 0.5).to(f16) if in_scale else None,
        out_scale=(torch.rand(n, generator=g) + 0.5).to(f16) if out_scale else None,
        perm=torch.randperm(k, generator=g).to(torch.int32) if perm is True else None)
    if perm == "mask":
        salient = torch.zeros(k, dtype=torch.bool)
        salient[torch.randperm(k, generator=g)[:k_salient]] = True
        fmt.perm = mask_order(salient).to(torch.int32)
    if k_salient:
        fmt.salient_codes = torch.randint(0, 16, (n, k_salient), generator=g, dtype=torch.uint8)
        fmt.salient_scale = (torch.rand(n, generator=g) * 0.02 + 0.001).to(f16)
        fmt.salient_zero = torch.randint(0, 16, (n,), generator=g).to(f16)
    if sparse:
        mask = torch.rand(n, k, generator=g) < sparse
        fmt.sparse = SparseCorrection.from_dense(torch.randn(n, k, generator=g) * 0.05 * mask)
    return fmt


def _round_robin(fns: dict, min_rounds: int = 30, max_rounds: int = 2000, budget_s: float = 2.0,
                 warmup: int = 5, sync=None) -> dict:
    """Median seconds per call of each fn, timed in interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(max_rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - t)
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def _cuda_times(fns: dict) -> dict:
    from triton.testing import do_bench  # flushes L2 between runs

    return {name: do_bench(fn, return_mode="median") * 1e-3 for name, fn in fns.items()}


def _sig(v: float, digits: int = 3) -> float:
    return float(f"{v:.{digits}g}")


def _packed_bytes(fmt: BitPlaneFormat) -> int:
    return sum(t.numel() * t.element_size() for t in fmt.tensors().values())


def _machine() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def run_kernel_bench(shapes=None, batches=None, planes=(1, 2), json_path=None, *, group: int = 128,
                     device: str | None = None, budget_s: float = 2.0, log=print) -> list[dict]:
    """Time every available backend against F.linear; returns (and optionally writes) one row per candidate."""
    load_optional_backends()
    shapes, batches = shapes or BENCH_SHAPES, batches or BENCH_BATCHES
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    lows = (torch.float16, torch.bfloat16) if cuda else (torch.bfloat16,)  # CUDA: both half types
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    base_names = {dt: f"F.linear {names[dt]}" for dt in (torch.float32, *lows)}
    machine = _machine()
    rows = []
    for n, k in shapes:
        gen = torch.Generator().manual_seed(1000 * n + k)
        w32 = torch.randn(n, k, generator=gen).to(dev) / k**0.5
        ws = {dt: w32.to(dt) for dt in base_names}
        layers = {}
        for p in planes:
            fmt = random_bitplane(n, k, p, group, generator=gen)
            module = QuantLinear.from_format(fmt).to(dev)
            for b in BACKENDS.values():
                if b.supports(module.meta, dev, torch.float32) is None:
                    layers[(b.name, p)] = (b, b.prepare(module), module, _packed_bytes(fmt))
        for m in batches:
            x32 = torch.randn(m, k, generator=gen).to(dev)
            xs = {dt: x32.to(dt) for dt in base_names}
            fns = {name: (lambda dt=dt: F.linear(xs[dt], ws[dt])) for dt, name in base_names.items()}
            for (name, p), (b, state, module, _) in layers.items():
                fns[f"{name} P{p}"] = lambda b=b, s=state, mod=module: b.forward(mod, s, x32)
            times = _cuda_times(fns) if cuda else _round_robin(fns, budget_s=budget_s)
            act = m * k * 4 + m * n * 4
            sizes = {name: n * k * (4 if dt == torch.float32 else 2) + (act if dt == torch.float32 else act // 2)
                     for dt, name in base_names.items()}
            sizes.update({f"{name} P{p}": v[3] + act for (name, p), v in layers.items()})
            for cand, t in times.items():
                rows.append({"shape": f"{n}x{k}", "n": n, "k": k, "m": m, "candidate": cand,
                             "planes": int(cand.split(" P")[-1]) if " P" in cand else None,
                             "group_size": group if " P" in cand else None, "device": str(dev),
                             "time_us": _sig(t * 1e6), "bytes": sizes[cand], "gbps": _sig(sizes[cand] / t / 1e9),
                             **{f"speedup_vs_{names[dt]}": _sig(times[name] / t) for dt, name in base_names.items()}})
            if log:
                log(format_table(rows[-len(times):], header=len(rows) == len(times)))
    machine["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for r in rows:
        r.update(machine)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_path, json.dumps(rows, indent=1))
    return rows


def format_table(rows: list[dict], header: bool = True) -> str:
    """Markdown table of kernel rows (or decode rows: they carry `decode_tokens_per_s`)."""
    if rows and "decode_tokens_per_s" in rows[0]:
        return format_decode(rows, header)
    else:
        lows = [c for c in (rows[0] if rows else {}) if c.startswith("speedup_vs_") and c != "speedup_vs_fp32"]
        cols = ["shape", "m", "candidate", "time_us", "bytes", "gbps", "speedup_vs_fp32", *lows]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] if header else []
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
