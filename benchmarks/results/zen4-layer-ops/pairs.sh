#!/bin/bash
# llmbin against llama.cpp Q4_0 in paired rounds (decode 128 tokens, pp64), 2 threads, alone: SmolLM2 ptq161 and
# GPTQ-4 (g128), Qwen2.5-Coder-1.5B ptq161. Checkpoints under /tmp from stops 44-45; llama-bench built in stop 44.
cd "$(dirname "$0")/../../.."; export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
OUT=${OUT:-/tmp/s49}
run() {  # label checkpoint gguf rounds
  echo "$1 start $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  .venv/bin/python benchmarks/decode_vs_llamacpp.py $2 --llama-bench $B/llama-bench --gguf $3 --rounds $4 --threads 2 \
    --json $OUT/pairs-$1.json > $OUT/pairs-$1.log 2>&1
  echo "exit $? $(date -u +%T)"
}
run smol-ptq161 /tmp/s45/smol-ptq161 /tmp/s44/smol-Q4_0.gguf 8
run smol-gptq4 /tmp/s44/smol-gptq4 /tmp/s44/smol-Q4_0.gguf 6
run q15-ptq161 /tmp/s44/q15-ptq161 /tmp/s44/q15-Q4_0.gguf 4
