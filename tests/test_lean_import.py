"""`import llmbin` stays lean: no triton, lm-eval or matplotlib, no kernel build, and nothing of the host process's
OpenMP settings changed (the `llmbin` command alone asks for passive OpenMP waiting)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, os, sys
argv0 = sys.argv[1]
sys.argv[0] = argv0
import torch
threads = torch.get_num_threads()
import llmbin
print(json.dumps({"modules": sorted(m for m in ("triton", "lm_eval", "matplotlib", "llmbin.kernels.cpu.backend")
                                     if m in sys.modules),
                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                  "threads_before": threads, "threads_after": torch.get_num_threads(),
                  "registered": "llmbin" in __import__("transformers.quantizers.auto", fromlist=["x"])
                                .AUTO_QUANTIZER_MAPPING}))
"""


def probe(tmp_path, argv0: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["LLMBIN_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", PROBE, argv0], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_llmbin_is_lean(tmp_path):
    found = probe(tmp_path, "-c")
    assert found["modules"] == []
    assert found["omp_wait_policy"] is None
    assert found["threads_after"] == found["threads_before"]
    assert found["registered"]  # what an import must do: from_pretrained reads llmbin checkpoints
    assert not (tmp_path / "cache").exists()  # no kernel built, no model converted


def test_the_command_asks_for_passive_openmp(tmp_path):
    assert probe(tmp_path, "/usr/local/bin/llmbin")["omp_wait_policy"] == "PASSIVE"
