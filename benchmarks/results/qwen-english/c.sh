#!/bin/bash
# issue 28, variant C: the layers calibrated on 16 code + 16 selfgen windows (calibration.selfgen_share=0.5), then the stage as A (code only)
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
while pgrep -f fp.sh >/dev/null; do sleep 5; done
S=/tmp/s45
echo "== C layers $(date -u +%T)"
/usr/bin/time -v llmbin quantize qwen2.5-coder-0.5b --recipe benchmarks/results/compare-v2/recipes/dbllm-distill.yaml \
  --set distill.enabled=false --set calibration.selfgen_share=0.5 --dataset data/networkx-3.3-calib.txt --nsamples 32 --seqlen 512 --seed 0 \
  -o $S/q05-dbC -q > $S/layersC.log 2>&1
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dbC --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-layersC.json > $S/eval-layersC.log 2>&1
echo "== C distill $(date -u +%T)"
/usr/bin/time -v llmbin distill $S/q05-dbC -o $S/q05-dC --set nsamples=32 --set eval_nsamples=4 --set seqlen=512 --dataset data/networkx-3.3-calib.txt > $S/distill-C.log 2> $S/distill-C.err
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dC --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-C.json > $S/eval-C.log 2>&1
echo "== done $(date -u +%T)"
