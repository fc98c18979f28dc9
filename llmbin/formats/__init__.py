"""Packed layouts, separate from the methods that fill them."""
from .base import FORMATS, FormatError, PackedFormat, format_from_meta
from .bitplane import BitPlaneFormat, SparseCorrection
from .uniform import UniformFormat

__all__ = ["FORMATS", "FormatError", "PackedFormat", "format_from_meta", "BitPlaneFormat", "SparseCorrection",
           "UniformFormat"]
