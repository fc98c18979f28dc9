"""Converting a bundled GGUF: its weight count read from the file (the basis of the memory check) equals the converted
model's, and a conversion that cannot fit is refused with one line before it starts."""
from __future__ import annotations

import math

import pytest
import safetensors

from llmbin.errors import LlmbinError
from llmbin.models.loading import bundled_gguf, check_conversion_memory, conversion_peak_bytes, gguf_parameters


def test_gguf_weight_count_equals_the_converted_checkpoint(smollm2_dir):
    stored = 0
    for file in sorted(smollm2_dir.glob("*.safetensors")):
        with safetensors.safe_open(str(file), framework="pt") as f:
            stored += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert gguf_parameters(bundled_gguf("smollm2-135m")) == stored


def test_a_conversion_that_cannot_fit_is_refused_naming_the_need_and_the_fix(tmp_path):
    need = conversion_peak_bytes(1_777_088_000)  # Qwen2.5-Coder-1.5B's weights
    assert 9.0 * 2**30 < need < 11 * 2**30  # measured peak 9.14 GB: the estimate covers it, not by much more
    with pytest.raises(LlmbinError) as err:
        check_conversion_memory("qwen2.5-coder-1.5b", need, 4 * 2**30, tmp_path / "target")
    message = str(err.value)
    assert "\n" not in message and "4.0 GB is available" in message and f"{need / 2**30:.1f} GB" in message
    assert str(tmp_path / "target") in message
    check_conversion_memory("qwen2.5-coder-1.5b", need, need, tmp_path / "target")  # exactly enough: goes ahead
    check_conversion_memory("qwen2.5-coder-1.5b", need, None, tmp_path / "target")  # unknown (not Linux): goes ahead
