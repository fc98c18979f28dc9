"""Calibration and evaluation text: local files, hub datasets (when online), or text sampled from the model."""
from .sources import load_text
from .windows import calibration_windows, evaluation_windows, token_stream

__all__ = ["load_text", "calibration_windows", "evaluation_windows", "token_stream"]
