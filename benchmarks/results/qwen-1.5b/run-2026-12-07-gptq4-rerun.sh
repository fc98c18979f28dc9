#!/bin/bash
# GPTQ-4 g128 on Qwen2.5-Coder-1.5B, streamed, re-run against the pre-flight estimate that counts the process (session 43/44)
cd /work/main
export PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=2
R=/tmp/s44/res
echo "== $(date -u +%FT%T) start load $(cut -d' ' -f1 /proc/loadavg)"
/usr/bin/time -v llmbin quantize qwen2.5-coder-1.5b --method gptq --bits 4 --group-size 128 \
  --dataset /work/shared/data/calib_coqa.txt --nsamples 32 --seqlen 512 --seed 0 --set pipeline.stream=true \
  -o /tmp/s44/q15-gptq4 --overwrite > $R/gptq4-quant.log 2>&1; rc=$?
echo "== $(date -u +%FT%T) exit $rc load $(cut -d' ' -f1 /proc/loadavg)"
/usr/bin/time -v llmbin eval /tmp/s44/q15-gptq4 --ppl /work/shared/data/eval_xsum.txt --seqlen 512 --max-windows 16 \
  --json $R/eval-gptq4-rerun.json > $R/gptq4-eval.log 2>&1; rc=$?
echo "== $(date -u +%FT%T) eval exit $rc"
