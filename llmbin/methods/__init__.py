"""Quantization methods, each registered by name when its module is imported (all modules here are)."""
import importlib
import pkgutil

from .base import METHODS, QuantMethod, QuantResult, get_method, register_method

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "solvers"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "QuantMethod", "QuantResult", "get_method", "register_method"]
