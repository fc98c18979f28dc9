"""Shared math of the quantization methods."""
