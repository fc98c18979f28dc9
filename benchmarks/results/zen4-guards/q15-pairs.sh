#!/bin/bash
# issue 31, session 45, Zen 4 (family 25 model 17), 2 threads, alone: Qwen2.5-Coder-1.5B GPTQ-4 g128, the guard-free step (new)
# against HEAD 9b49a9f (old), each paired with llama.cpp Q4_0 of the same model; old, new
cd /work/main
export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s44; R=/tmp/s45/z4/guards
for v in old new; do
  P=/work/main; [ $v = old ] && P=/tmp/s45/base
  echo "== $(date -u +%T) q15-gptq4 $v load $(cut -d' ' -f1 /proc/loadavg)"
  env PYTHONPATH=$P .venv/bin/python benchmarks/decode_vs_llamacpp.py $S/q15-gptq4 --llama-bench $B/llama-bench --gguf $S/q15-Q4_0.gguf \
    --rounds 3 --threads 2 --json $R/q15-gptq4-$v.json > $R/q15-gptq4-$v.log 2>&1
  grep -A3 '"llmbin_mean"' $R/q15-gptq4-$v.json | tr -d '\n '; echo
done
