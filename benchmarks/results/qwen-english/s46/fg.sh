#!/bin/bash
# issue 28, session 46: layer-stage variants on Qwen2.5-Coder-0.5B, v2-reduced, chosen on valid_xsum (8 x 512)
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
S=/tmp/s46/q
R=benchmarks/results/compare-v2/recipes/dbllm-distill.yaml
run() {  # name, extra --set flags...
  n=$1; shift
  echo "== $n layers $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  /usr/bin/time -v llmbin quantize qwen2.5-coder-0.5b --recipe $R --set distill.enabled=false "$@" \
    --dataset data/networkx-3.3-calib.txt --nsamples 32 --seqlen 512 --seed 0 -o $S/q05-$n -q > $S/layers-$n.log 2>&1
  echo "   rc $? $(date -u +%T)"
  llmbin eval $S/q05-$n --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-layers-$n.json > $S/eval-layers-$n.log 2>&1
  echo "   eval rc $? $(date -u +%T)"
}
run F --set calibration.selfgen_share=0.5 --set percdamp=0.1
run G --set calibration.selfgen_share=0.75
echo "== done $(date -u +%T)"
