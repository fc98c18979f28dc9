#!/bin/bash
# ptq161-format SmolLM2 against llama.cpp Q4_0, paired rounds (decode 128, pp64, pp512), 2 threads, alone:
# llmbin's attention (the default), then LLMBIN_ATTENTION=sdpa
cd /work/main; export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
R=/tmp/s48
for v in llmbin sdpa; do
  echo "$v start $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  LLMBIN_ATTENTION=$v .venv/bin/python benchmarks/decode_vs_llamacpp.py /tmp/s45/smol-ptq161 --llama-bench $B/llama-bench --gguf /tmp/s44/smol-Q4_0.gguf --rounds 4 --threads 2 --json $R/pairs-$v.json > $R/pairs-$v.log 2>&1
  echo "exit $? $(date -u +%T)"
done
