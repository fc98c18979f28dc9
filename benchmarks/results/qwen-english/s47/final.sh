#!/bin/bash
# the valid_xsum choice (argument: the checkpoint dir), scored once on eval_xsum's first 8 x 512 windows and the
# code text, int16 activations as every earlier Qwen figure
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2 LLMBIN_CPU_GEMM_INT8=0
C=$1; V=$(basename $1)
echo "== test scoring of $V $(date -u +%T)"
llmbin eval $C --ppl data/networkx-3.3-eval.txt,../shared/data/eval_xsum.txt --seqlen 512 --max-windows 8 --json /tmp/s47/test-$V.json > /tmp/s47/test-$V.log 2>&1
grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" /tmp/s47/test-$V.log
echo "== done $(date -u +%T)"
