#!/bin/bash
# A second paired run after the clean test (decode 128 tokens, pp64, 8 rounds each), 2 threads, alone: SmolLM2
# GPTQ-4 g128 and ptq161 against llama.cpp Q4_0.
cd "$(dirname "$0")/../../.."; export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
OUT=${OUT:-/tmp/s49}
for c in smol-gptq4:/tmp/s44/smol-gptq4 smol-ptq161:/tmp/s45/smol-ptq161; do
  label=${c%%:*}; path=${c#*:}
  echo "$label start $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  .venv/bin/python benchmarks/decode_vs_llamacpp.py $path --llama-bench $B/llama-bench --gguf /tmp/s44/smol-Q4_0.gguf \
    --rounds 8 --threads 2 --json $OUT/pairs2-$label.json > $OUT/pairs2-$label.log 2>&1
  echo "exit $? $(date -u +%T)"
done
