"""Native CPU backend: the lookup-table kernels (lut_kernels.h), their plan and thread pool, built on first use."""
from .. import register_backend
from .backend import ISAS, ROWS, CpuBackend, CpuState, gemv_threads, lut_matmul, prepare_state
from .build import build_error, cache_dir, load_extension

register_backend(CpuBackend())

__all__ = ["ISAS", "ROWS", "CpuBackend", "CpuState", "gemv_threads", "lut_matmul", "prepare_state", "build_error",
           "cache_dir", "load_extension"]
