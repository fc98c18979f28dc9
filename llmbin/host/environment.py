"""What changes float results besides the code, recorded beside every checkpoint and score."""
from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def compute_environment() -> dict:
    """torch's thread count (it reorders float sums) and the CPU's vector path."""
    import torch

    return {"python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine()}


def versions() -> dict:
    import torch
    import transformers

    return {"llmbin": package_version("llmbin"), "lm_eval": package_version("lm_eval"), "torch": torch.__version__,
            "transformers": transformers.__version__, **compute_environment()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_line() -> str:
    """'2 threads, load average 0.31': what a speed figure needs beside it."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{torch.get_num_threads()} threads, load average {load:.2f}"
