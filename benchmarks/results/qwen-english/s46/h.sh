#!/bin/bash
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
while pgrep -f fg.sh >/dev/null; do sleep 5; done
S=/tmp/s46/q
R=benchmarks/results/compare-v2/recipes/dbllm-distill.yaml
n=H
echo "== $n layers $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
/usr/bin/time -v llmbin quantize qwen2.5-coder-0.5b --recipe $R --set distill.enabled=false --set calibration.selfgen_share=0.5 --set percdamp=0.003 \
  --dataset data/networkx-3.3-calib.txt --nsamples 32 --seqlen 512 --seed 0 -o $S/q05-$n -q > $S/layers-$n.log 2>&1
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-$n --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-layers-$n.json > $S/eval-layers-$n.log 2>&1
echo "   eval rc $? $(date -u +%T)"
