#!/bin/bash
cd /work/main
export PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=2
LC=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
R=/tmp/s37/res15; mkdir -p $R
T="/usr/bin/time -v"
step() { echo "== $(date -u +%T) start $1 load $(cut -d' ' -f1 /proc/loadavg)"; shift; "$@"; echo "== $(date -u +%T) exit $?"; }
E=/work/shared/data/eval_xsum.txt
step pair-gptq4 python -P benchmarks/decode_vs_llamacpp.py /tmp/r31/q15-gptq4 --llama-bench $LC/llama-bench --gguf /tmp/r31/q15-Q4_0.gguf --rounds 3 --threads 2 --prefill 64 --json $R/decode-gptq4-vs-q4_0.json > $R/pair-gptq4.log 2>&1
step loadmem-gptq4 python -P benchmarks/load_memory.py /tmp/r31/q15-gptq4 --json $R/load-memory-gptq4.json > $R/loadmem-gptq4.log 2>&1
step q-dbllm $T llmbin quantize qwen2.5-coder-1.5b --recipe dbllm-2bit --set distill.enabled=false --set pipeline.stream=true \
  --dataset /work/shared/data/calib_coqa.txt --nsamples 32 --seqlen 512 --seed 0 -o /tmp/s37/q15-dbllm --overwrite > $R/quant-dbllm.log 2>&1
step eval-dbllm $T llmbin eval /tmp/s37/q15-dbllm --ppl $E --seqlen 512 --max-windows 16 --json $R/eval-dbllm.json > $R/eval-dbllm.log 2>&1
step pair-dbllm python -P benchmarks/decode_vs_llamacpp.py /tmp/s37/q15-dbllm --llama-bench $LC/llama-bench --gguf /tmp/r31/q15-Q4_0.gguf --rounds 3 --threads 2 --prefill 64 --json $R/decode-dbllm-vs-q4_0.json > $R/pair-dbllm.log 2>&1
touch /tmp/s37/queue3.done
