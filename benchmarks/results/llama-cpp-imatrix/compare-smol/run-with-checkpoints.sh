#!/bin/bash
cd /work/main
export PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=1
G=""; for t in Q4_0 Q3_K_S Q2_K IQ2_XXS IQ1_M IQ1_S TQ1_0; do G="$G --gguf $t=/tmp/gg/smol-$t.gguf"; done
echo "== $(date -u +%T) start load $(cut -d' ' -f1 /proc/loadavg)"
nice llmbin compare smollm2-135m --checkpoint dbllm-2bit=/tmp/r28/d256 --checkpoint dbllm-layers-only=/tmp/r28/dbllm-base $G \
  --dataset /work/shared/data/calib_coqa.txt --nsamples 128 --seqlen 512 --seed 0 \
  --ppl /work/shared/data/eval_xsum.txt --max-windows 128 --resume -o /tmp/s37/compare-smol2
echo "== $(date -u +%T) exit $?"
