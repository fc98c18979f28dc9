"""Packed layouts, separate from the methods that fill them."""
from .base import FORMATS, FormatError, PackedFormat, WrittenFormat, checked_format, format_from_meta
from .bitplane import BitPlaneFormat, SparseCorrection
from .uniform import UniformFormat
from . import masked  # noqa: F401,E402  (registers the PB-LLM bitmap form)

__all__ = ["FORMATS", "FormatError", "PackedFormat", "checked_format", "format_from_meta", "BitPlaneFormat", "SparseCorrection",
           "UniformFormat"]
