#!/bin/bash
# issue 28, variant E: C's layers (calibration.selfgen_share=0.5), the stage on 64 code windows (64 steps) instead of 32
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
S=/tmp/s45
echo "== E distill $(date -u +%T)"
/usr/bin/time -v llmbin distill $S/q05-dbC -o $S/q05-dE --set nsamples=64 --set eval_nsamples=4 --set seqlen=512 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-E.log 2> $S/distill-E.err
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dE --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-E.json > $S/eval-E.log 2>&1
echo "== done $(date -u +%T)"
