#!/bin/bash
# continuation of p.sh (its shell was stopped so the evals could pin the activation rounding): every figure with
# int16 activations (LLMBIN_CPU_GEMM_INT8=0, as every earlier Qwen figure), plus the layers once with the new default
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
S=/tmp/s47
while kill -0 28125 2>/dev/null; do sleep 10; done
echo "   layers ended $(date -u +%T); config: $(ls $S/q05-pP/config.json 2>&1)"
for mode in 0 binarized; do
  LLMBIN_CPU_GEMM_INT8=$mode llmbin eval $S/q05-pP --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-layersP-$mode.json > $S/eval-layersP-$mode.log 2>&1
  echo "layers, LLMBIN_CPU_GEMM_INT8=$mode:"; grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-layersP-$mode.log
done
echo "== P distill $(date -u +%T)"
LLMBIN_CPU_GEMM_INT8=0 /usr/bin/time -v llmbin distill $S/q05-pP -o $S/q05-dP --set nsamples=64 --set eval_nsamples=4 --set seqlen=512 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-P.log 2> $S/distill-P.err
echo "   rc $? $(date -u +%T)"
for mode in 0 binarized; do
  LLMBIN_CPU_GEMM_INT8=$mode llmbin eval $S/q05-dP --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-P-$mode.json > $S/eval-P-$mode.log 2>&1
  echo "stage, LLMBIN_CPU_GEMM_INT8=$mode:"; grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-P-$mode.log
done
echo "== done $(date -u +%T)"
