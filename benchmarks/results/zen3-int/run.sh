#!/bin/bash
# issue 31 on the AVX2 Zen 3: checkpoints, load memory, paired decode/prefill vs llama.cpp (one heavy job at a time)
cd /work/main
export OMP_NUM_THREADS=2
L=.venv/bin/llmbin
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
R=/tmp/s37/res; mkdir -p $R
step() { echo "== $(date -u +%T) start $1 load $(cut -d' ' -f1 /proc/loadavg)"; shift; "$@"; echo "== $(date -u +%T) exit $?"; }
step q-ptq161 /usr/bin/time -v $L quantize smollm2-135m --recipe ptq161 --set preprocess.enabled=false --set epochs=1 --set distill.enabled=false \
  --dataset ../shared/data/calib_coqa.txt --nsamples 16 --seqlen 256 --seed 0 -o /tmp/s37/smol-ptq161 --overwrite -q > $R/quant-ptq161.log 2>&1
step q-gptq4 /usr/bin/time -v $L quantize smollm2-135m --method gptq --bits 4 --group-size 128 --dataset ../shared/data/calib_coqa.txt \
  --nsamples 16 --seqlen 256 --seed 0 -o /tmp/s37/smol-gptq4 --overwrite -q > $R/quant-gptq4.log 2>&1
step loadmem .venv/bin/python -P benchmarks/load_memory.py /tmp/s37/smol-gptq4 --json $R/load-memory-gptq4.json > $R/loadmem.log 2>&1
step pair-gptq4 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py /tmp/s37/smol-gptq4 --llama-bench $B/llama-bench --gguf /tmp/gg/smol-Q4_0.gguf --rounds 6 --threads 2 --json $R/decode-prefill-gptq4-vs-llamacpp.json > $R/pair-gptq4.log 2>&1
step pair-ptq161 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py /tmp/s37/smol-ptq161 --llama-bench $B/llama-bench --gguf /tmp/gg/smol-Q4_0.gguf --rounds 6 --threads 2 --json $R/decode-prefill-ptq161-vs-llamacpp.json > $R/pair-ptq161.log 2>&1
touch /tmp/s37/speed.done
