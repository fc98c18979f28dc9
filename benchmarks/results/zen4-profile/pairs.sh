#!/bin/bash
# issue 31, session 46, Zen 4 (AMD EPYC family 25 model 17; AVX-512 + VNNI + BF16, no AMX), 2 threads, the Qwen
# experiment paused (SIGSTOP) for the whole run: pooled products taken in shared chunks (new, working tree) against
# HEAD 9c7f5a4 (old: fixed equal shares), each paired with llama.cpp Q4_0 of the same model; old/new alternating
cd /work/main
export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s44; R=/tmp/s46/z4; mkdir -p $R
one() {  # label checkpoint gguf version
  P=/work/main; [ $4 = old ] && P=/tmp/s46/base
  echo "== $(date -u +%T) $1 $4 load $(cut -d' ' -f1 /proc/loadavg)"
  env PYTHONPATH=$P .venv/bin/python benchmarks/decode_vs_llamacpp.py $2 --llama-bench $B/llama-bench --gguf $3 \
    --rounds 3 --threads 2 --json $R/$1-$4.json > $R/$1-$4.log 2>&1
  grep -A3 '"llmbin_mean"' $R/$1-$4.json | tr -d '\n '; echo
}
one smol-gptq4-1 $S/smol-gptq4 $S/smol-Q4_0.gguf old
one smol-gptq4-1 $S/smol-gptq4 $S/smol-Q4_0.gguf new
one smol-gptq4-2 $S/smol-gptq4 $S/smol-Q4_0.gguf new
one smol-gptq4-2 $S/smol-gptq4 $S/smol-Q4_0.gguf old
one smol-ptq161 /tmp/s45/smol-ptq161 $S/smol-Q4_0.gguf old
one smol-ptq161 /tmp/s45/smol-ptq161 $S/smol-Q4_0.gguf new
one q15-gptq4 $S/q15-gptq4 $S/q15-Q4_0.gguf old
one q15-gptq4 $S/q15-gptq4 $S/q15-Q4_0.gguf new
