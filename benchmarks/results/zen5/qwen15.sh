#!/bin/bash
# Qwen2.5-Coder-1.5B on Zen 5: RTN-4 g128 streamed (the uniform format GPTQ-4 writes: same kernel, same speed; RTN
# because GPTQ took 45 min here on the Zen 3), paired decode/pp64 against llama.cpp Q4_0 of the same model
cd /work/main
export OMP_NUM_THREADS=2
L=.venv/bin/llmbin
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s39; R=$S/res
step() { echo "== $(date -u +%T) start $1 load $(cut -d' ' -f1 /proc/loadavg)"; shift; "$@"; echo "== $(date -u +%T) exit $?"; }
[ -d $S/q15-rtn4 ] || step q15-rtn4 /usr/bin/time -v $L quantize qwen2.5-coder-1.5b --method rtn --bits 4 --group-size 128 \
  --dataset ../shared/data/calib_coqa.txt --nsamples 4 --seqlen 256 --seed 0 --set pipeline.stream=true -o $S/q15-rtn4 > $R/q15-quant.log 2>&1
[ -f $S/q15-Q4_0.gguf ] || $B/llama-quantize --allow-requantize ~/.cache/llmbin/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf $S/q15-Q4_0.gguf Q4_0 2 > $R/q15-q40.log 2>&1
step q15-pair .venv/bin/python -P benchmarks/decode_vs_llamacpp.py $S/q15-rtn4 --llama-bench $B/llama-bench --gguf $S/q15-Q4_0.gguf --rounds 3 --threads 2 --json $R/q15-decode-prefill-rtn4-vs-q4_0.json > $R/q15-pair.log 2>&1
touch $S/q15.done
# scored (the reduced protocol of ../qwen-1.5b/: 16 x 512 windows of eval_xsum) and a generation
step q15-eval /usr/bin/time -v $L eval $S/q15-rtn4 --ppl ../shared/data/eval_xsum.txt --seqlen 512 --max-windows 16 --json $R/q15-eval-rtn4.json > $R/q15-eval.log 2>&1
step q15-generate $L generate $S/q15-rtn4 --prompt "def fibonacci(n):" --max-new-tokens 64 --threads 2 > $R/q15-generate-rtn4.txt 2>&1
