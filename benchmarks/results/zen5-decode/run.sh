#!/bin/bash
# issue 31, session 40, Zen 5 (AVX-512 VNNI + BF16, no AMX), 2 threads, one heavy job at a time: paired decode and
# prefill against llama.cpp Q4_0 after the decode-overhead work (vectorized token preparation, register-blocked
# decode attention, fused q/k/v and gate/up products in the compiled step). Checkpoints as ../zen5/README.md.
cd /work/main
export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s39; R=benchmarks/results/zen5-decode
step() { echo "== $(date -u +%T) start $1 load $(cut -d' ' -f1 /proc/loadavg)"; shift; "$@"; echo "== $(date -u +%T) exit $?"; }
step pair-gptq4 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py $S/smol-gptq4 --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf --rounds 6 --threads 2 --json $R/decode-prefill-gptq4-vs-llamacpp.json > $R/pair-gptq4.log 2>&1
step pair-ptq161 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py $S/smol-ptq161 --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf --rounds 6 --threads 2 --json $R/decode-prefill-ptq161-vs-llamacpp.json > $R/pair-ptq161.log 2>&1
step pair-q15 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py $S/q15-rtn4 --llama-bench $B/llama-bench --gguf $S/q15-Q4_0.gguf --rounds 3 --threads 2 --json $R/decode-prefill-q15-rtn4-vs-llamacpp.json > $R/pair-q15.log 2>&1
