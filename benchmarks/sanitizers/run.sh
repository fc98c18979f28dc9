#!/usr/bin/env bash
# The sanitizer runs of issue 29 (results: benchmarks/results/sanitizers/README.md), from the repository root:
#   bash benchmarks/sanitizers/run.sh tsan    # spin_pool.h's stress under ThreadSanitizer (no torch)
#   bash benchmarks/sanitizers/run.sh asan    # the CI load-fuzz set and the CPU kernel tests against the extension
#                                             # built with -fsanitize=address,undefined (its own cache directory)
set -euo pipefail
PY=${PY:-.venv/bin/python}
case "${1:-}" in
  tsan)
    g++ -std=c++17 -O1 -g -fsanitize=thread -pthread benchmarks/sanitizers/spin_pool_stress.cpp -o /tmp/spin_pool_tsan
    TSAN_OPTIONS="die_after_fork=0 halt_on_error=1 second_deadlock_stack=1" /tmp/spin_pool_tsan
    ;;
  asan)
    export LLMBIN_CPU_SANITIZE=address,undefined
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
    # Python's own allocations are not ours to judge; a kernel's out-of-bounds read or UB stops the run
    export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    export OMP_NUM_THREADS=2
    $PY -c "from llmbin.kernels.cpu import load_extension, build_error, cache_dir; \
            assert load_extension() is not None, build_error(); print('sanitized build:', cache_dir())"
    $PY -m pytest -q -p no:cacheprovider tests/test_fuzz_load.py tests/test_kernels_cpu.py tests/test_decode_attention.py
    ;;
  *)
    echo "usage: $0 tsan|asan" >&2; exit 2;;
esac
