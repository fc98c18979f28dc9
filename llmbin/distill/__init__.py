"""Distillation of packed models against their full-precision teacher (every method, every format)."""
from .options import DistillOptions

__all__ = ["DistillOptions"]
