#!/usr/bin/env bash
# checkpoints for the speed benchmarks (reduced calibration: the format and so the speed are the recipe's)
set -x
cd /work/main
L=.venv/bin/llmbin
/usr/bin/time -v $L quantize smollm2-135m --recipe ptq161 --set preprocess.enabled=false --set epochs=1 \
  --dataset ../shared/data/calib_coqa.txt --nsamples 16 --seqlen 256 --seed 0 -o /tmp/bench/smol-ptq161 --overwrite -q \
  > /tmp/bench/quant-smol.log 2>&1
/usr/bin/time -v $L quantize qwen2.5-coder-0.5b --recipe dbllm-2bit --dataset ../shared/data/calib_coqa.txt \
  --nsamples 16 --seqlen 256 --seed 0 -o /tmp/bench/qwen-dbllm --overwrite -q > /tmp/bench/quant-qwen.log 2>&1
echo QUANT DONE
