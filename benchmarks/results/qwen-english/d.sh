#!/bin/bash
# issue 28, variant D: C's layers (calibration.selfgen_share=0.5), the stage with half its windows written by the teacher (as B)
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
S=/tmp/s45
echo "== D distill $(date -u +%T)"
/usr/bin/time -v llmbin distill $S/q05-dbC -o $S/q05-dD --set nsamples=32 --set eval_nsamples=4 --set seqlen=512 --set selfgen_share=0.5 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-D.log 2> $S/distill-D.err
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dD --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-D.json > $S/eval-D.log 2>&1
echo "== done $(date -u +%T)"
