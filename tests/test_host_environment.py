"""The CPU named beside every speed figure: brand, family and model, and the vector features the kernels use."""
from __future__ import annotations

from pathlib import Path

import pytest

from llmbin.host.environment import cpu_name, vector_features, versions


@pytest.mark.parametrize("flags,words", [
    ({"avx2", "fma"}, "AVX2, no AVX-512"),
    ({"sse4_2"}, "no AVX2"),
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX-512 + VNNI + BF16, no AMX"),  # AMD Zen 4 / Zen 5
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}, "AVX-512 + VNNI + BF16, AMX"),  # Xeon 4th gen
    ({"avx2", "avx512f"}, "AVX-512, no AMX"),
])
def test_vector_features_name_what_the_kernels_use(flags, words):
    assert vector_features(flags) == words


def test_cpu_name_carries_family_and_model_where_cpuinfo_has_them():
    info = Path("/proc/cpuinfo")
    if not info.is_file() or "cpu family" not in info.read_text():
        pytest.skip("no x86 /proc/cpuinfo here")
    first = info.read_text().split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in first.splitlines())}
    name = cpu_name()
    assert name.startswith(fields["model name"])
    assert f"family {fields['cpu family']} model {fields['model']};" in name
    assert versions()["cpu"] == name  # recorded beside every checkpoint, score and comparison
