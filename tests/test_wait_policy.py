"""The `llmbin` command makes OpenMP threads wait passively (shared machines) unless the user chose a policy; a
library import leaves the process's OpenMP alone. Checked by what the threads do, not by reading the variable back:
between short parallel regions, libgomp's default (and ACTIVE) worker spins through the gaps and burns CPU, a
passive one sleeps (measured here: CPU/wall 0.97 default, 0.75 ACTIVE, 0.05 PASSIVE)."""
import os
import subprocess
import sys

CODE = """
import sys, time
sys.argv[0] = sys.argv[1]  # as the `llmbin` console script or a plain `python -c` would have it
import llmbin, torch
torch.set_num_threads(2)
x = torch.randn(200_000)
for _ in range(20):
    x.mul_(1.0)
cpu, wall = time.process_time(), time.perf_counter()
for _ in range(300):
    x.mul_(1.0001)  # a short OpenMP region on 2 threads (at::parallel_for)
    time.sleep(0.002)  # a gap, as between a decode step's small ops
print((time.process_time() - cpu) / (time.perf_counter() - wall))
"""


def cpu_per_wall(argv0: str, env_policy: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run([sys.executable, "-c", CODE, argv0], env=env, capture_output=True, text=True, check=True,
                         timeout=300).stdout
    return float(out.strip().splitlines()[-1])


def test_the_command_waits_passively_an_explicit_choice_wins_and_the_library_changes_nothing():
    command = cpu_per_wall("/usr/local/bin/llmbin", None)
    assert command < 0.2, f"the command's idle OpenMP thread burned {command:.2f} CPU per wall second"
    chosen = cpu_per_wall("/usr/local/bin/llmbin", "ACTIVE")
    assert chosen > 0.3, f"OMP_WAIT_POLICY=ACTIVE should spin through the gaps: {chosen:.2f}"
    library = cpu_per_wall("-c", None)
    assert library > 0.3, f"a library import must leave libgomp's default (spinning) alone: {library:.2f}"
