"""`import llmbin` makes OpenMP threads wait passively (shared machines), unless the user chose a policy."""
import os
import subprocess
import sys


def policy_seen(env_policy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = "import os, llmbin, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_sets_passive_waiting_and_respects_an_explicit_choice():
    assert policy_seen(None) == "PASSIVE"
    assert policy_seen("ACTIVE") == "ACTIVE"
