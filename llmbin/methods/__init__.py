"""Quantization methods, each registered by name."""
from .base import METHODS, QuantMethod, QuantResult, get_method, register_method
from . import rtn, gptq  # noqa: F401  (registration)

__all__ = ["METHODS", "QuantMethod", "QuantResult", "get_method", "register_method"]
