"""The `llmbin` command makes OpenMP threads wait passively (shared machines) unless the user chose a policy; a
library import leaves the process's OpenMP alone. Checked by what the threads do, not by reading the variable
back: after a parallel region, actively waiting threads keep burning CPU while the process sleeps."""
import os
import subprocess
import sys

CODE = """
import os, sys, time
sys.argv[0] = sys.argv[1]  # as the `llmbin` console script or a plain `python -c` would have it
import llmbin, torch
torch.set_num_threads(2)
x = torch.randn(4_000_000)
for _ in range(50):
    x = x * 1.0001  # at::parallel_for: an OpenMP region on 2 threads
start = time.process_time()
time.sleep(0.6)
print(time.process_time() - start)
"""


def idle_cpu_seconds(argv0: str, env_policy: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run([sys.executable, "-c", CODE, argv0], env=env, capture_output=True, text=True, check=True,
                         timeout=300).stdout
    return float(out.strip().splitlines()[-1])


def test_the_command_waits_passively_and_an_explicit_choice_wins():
    passive = idle_cpu_seconds("/usr/local/bin/llmbin", None)
    active = idle_cpu_seconds("/usr/local/bin/llmbin", "ACTIVE")
    assert passive < 0.15, f"the command's OpenMP threads burned {passive:.2f} s of CPU while idle"
    assert active > 0.3, f"with OMP_WAIT_POLICY=ACTIVE the threads should spin while idle, burned {active:.2f} s"
