#!/bin/bash
# stop 42's PTQ1.61* checkpoint of Qwen2.5-Coder-1.5B again (same command, seed 0), for the distillation memory runs
cd /work/main; source .venv/bin/activate
export OMP_NUM_THREADS=2
date -u
/usr/bin/time -v llmbin quantize qwen2.5-coder-1.5b --recipe ptq161 --set preprocess.enabled=false --set distill.enabled=false --set epochs=1 --set pipeline.stream=true --dataset /work/shared/data/calib_coqa.txt --nsamples 32 --seqlen 512 --seed 0 -o /tmp/s44/q15-ptq161 > /tmp/s44/res/q15-ptq161.log 2>&1
echo "exit $?"; date -u
