#!/bin/bash
# p2.sh's stage with 128 code windows (128 steps) instead of 64: the layers alone are 4.1x on code and 10x on
# English, further from the bars than DB-LLM's were, and a longer stage bought code on DB-LLM (I against E)
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
S=/tmp/s47
while pgrep -f "eval-layersP-binarized" >/dev/null; do sleep 5; done
echo "layers, LLMBIN_CPU_GEMM_INT8=binarized:"; grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-layersP-binarized.log
echo "== P distill $(date -u +%T)"
LLMBIN_CPU_GEMM_INT8=0 /usr/bin/time -v llmbin distill $S/q05-pP -o $S/q05-dP --set nsamples=128 --set eval_nsamples=4 --set seqlen=512 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-P.log 2> $S/distill-P.err
echo "   rc $? $(date -u +%T)"
for mode in 0 binarized; do
  LLMBIN_CPU_GEMM_INT8=$mode llmbin eval $S/q05-dP --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-P-$mode.json > $S/eval-P-$mode.log 2>&1
  echo "stage, LLMBIN_CPU_GEMM_INT8=$mode:"; grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-P-$mode.log
done
echo "== done $(date -u +%T)"
