#!/bin/bash
# issue 28, variant J: DB-LLM 2.5-bit layers calibrated on the protocol's 32 code windows plus 32 written by the model
# (nsamples 64, calibration.selfgen_share=0.5; C had 16 + 16), then E's stage (64 code windows, 64 steps).
# Valid texts after each step; eval_xsum only if J beats E (119.21) on valid_xsum.
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
S=/tmp/s48/q
echo "== J layers $(date -u +%T)"
/usr/bin/time -v llmbin quantize qwen2.5-coder-0.5b --recipe benchmarks/results/compare-v2/recipes/dbllm-distill.yaml \
  --set distill.enabled=false --set calibration.selfgen_share=0.5 --dataset data/networkx-3.3-calib.txt --nsamples 64 --seqlen 512 --seed 0 \
  -o $S/q05-dbJ -q > $S/layersJ.log 2>&1
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dbJ --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-layersJ.json > $S/eval-layersJ.log 2>&1
grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-layersJ.log
echo "== J distill $(date -u +%T)"
/usr/bin/time -v llmbin distill $S/q05-dbJ -o $S/q05-dJ --set nsamples=64 --set eval_nsamples=4 --set seqlen=512 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-J.log 2> $S/distill-J.err
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dJ --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-J.json > $S/eval-J.log 2>&1
grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-J.log
echo "== done $(date -u +%T)"
