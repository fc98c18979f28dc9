#!/bin/bash
# distillation-stage memory on Qwen 1.5B PTQ1.61*: buffers allocated before any weight is built (new) against the
# session-43 code (old, e4a2973), 2 threads, alone, one after the other
cd /work/main
export OMP_NUM_THREADS=2
R=/tmp/s44/dmem; mkdir -p $R
for v in new old; do
  P=/work/main; [ $v = old ] && P=/tmp/s44/base
  echo "== $(date -u +%T) $v load $(cut -d' ' -f1 /proc/loadavg)"
  PYTHONPATH=$P .venv/bin/python benchmarks/distill_memory.py /tmp/s44/q15-ptq161 /tmp/s44/q15-d-$v --dataset /work/shared/data/calib_coqa.txt \
    --nsamples 16 --seqlen 256 --json $R/$v.json > $R/probe-$v.txt 2>&1
  echo "== $(date -u +%T) exit $?"
done
