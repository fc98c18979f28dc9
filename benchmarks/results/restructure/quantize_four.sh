#!/bin/bash
# The four checkpoints of the restructuring's byte-identity check (README.md here), at 1 thread.
# $1: how to run llmbin (e.g. "-m llmbin.cli", or a script that puts an older checkout first), $2: output prefix.
set -e
PY=${PY:-.venv/bin/python}
TEXT=${TEXT:-../shared/data/calib_coqa.txt}
export OMP_NUM_THREADS=1
$PY $1 quantize smollm2-135m --method rtn --bits 4 --dataset $TEXT --nsamples 8 --seqlen 128 -o $2-rtn4 --overwrite -q
$PY $1 quantize smollm2-135m --recipe ptq161-demo --dataset $TEXT -o $2-ptq161demo --overwrite -q
# PTQ1.61 with its LoRA preprocessing, small: the LoRA's gradient checkpointing changed scheme in the move
$PY $1 quantize smollm2-135m --recipe ptq161 --dataset $TEXT --nsamples 8 --seqlen 128 --set epochs=1 \
    --set preprocess.windows=4 --set preprocess.pass1_epochs=1 -o $2-ptq161pre --overwrite -q
# DB-LLM with its distillation stage, small: the stage's layer patching and state files moved
$PY $1 quantize smollm2-135m --recipe dbllm-2bit --dataset $TEXT --nsamples 8 --seqlen 128 --set distill.enabled=true \
    --set distill.nsamples=4 --set distill.eval_nsamples=1 --set distill.seqlen=128 -o $2-dbllmdistill --overwrite -q
