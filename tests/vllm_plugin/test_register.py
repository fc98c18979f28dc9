"""The plugin is found through its entry point, registers "llmbin" once however often vLLM calls it, and importing
it costs nothing of vLLM."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points


def test_entry_point_names_register():
    found = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert found.get("llmbin") == "llmbin.integrations.vllm:register"


def test_register_is_idempotent_and_lazy():
    probe = """
import json, sys
import llmbin.integrations.vllm as plugin
lazy = not any(m == "vllm" or m.startswith("vllm.") for m in sys.modules)
plugin.register(); plugin.register()
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
print(json.dumps({"lazy": lazy, "count": QUANTIZATION_METHODS.count("llmbin"),
                  "config": get_quantization_config("llmbin").__name__}))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"lazy": True, "count": 1, "config": "LlmbinConfig"}
