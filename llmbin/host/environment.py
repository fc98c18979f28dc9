"""What changes float results besides the code, recorded beside every checkpoint and score."""
from __future__ import annotations

import functools
import os
import platform
from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def compute_environment() -> dict:
    """torch's thread count (it reorders float sums), the CPU and its vector path."""
    import torch

    return {"python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(), "cpu": cpu_name()}


def versions() -> dict:
    import torch
    import transformers

    return {"llmbin": package_version("llmbin"), "lm_eval": package_version("lm_eval"), "torch": torch.__version__,
            "transformers": transformers.__version__, **compute_environment()}


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines()) if k.strip()}


def vector_features(flags: set[str]) -> str:
    """What decides the packed kernels' speed, in words: 'AVX-512 + VNNI + BF16, no AMX', 'AVX2, no AVX-512'."""
    if "avx512f" not in flags:
        return "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    extra = [name for flag, name in (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16")) if flag in flags]
    return " + ".join(["AVX-512", *extra]) + (", AMX" if "amx_tile" in flags else ", no AMX")


@functools.cache  # the CPU does not change within a process; versions() asks for it on every record
def cpu_name() -> str:
    """'AMD EPYC (family 25 model 17; AVX-512 + VNNI + BF16, no AMX)'. Virtual machines often show only the brand,
    and the same brand covers CPUs of very different speed (Zen 3, 4 and 5 are all 'AMD EPYC'): the family and model
    numbers tell them apart, the vector features say which kernels run."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" not in info:
        return name
    flags = set(info.get("flags", "").split())
    return f"{name} (family {info['cpu family']} model {info.get('model', '?')}; {vector_features(flags)})"


def machine_line() -> str:
    """'2 threads, load average 0.31': what a speed figure needs beside it."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{torch.get_num_threads()} threads, load average {load:.2f}"
