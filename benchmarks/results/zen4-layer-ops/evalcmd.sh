#!/bin/bash
# `llmbin eval` itself, valid_xsum 32 x 512: the float32 model, the packed ptq161 checkpoint as loaded now (fused layer
# ops, GEMM spans of 4), and the same with session 48's maths (LLMBIN_LAYER_OPS=torch LLMBIN_CPU_GEMM_SPAN=1);
# 2 rounds alternating, alone, 2 threads. Checkpoint: /tmp/s45/smol-ptq161 (the shipped ptq161 recipe's, stop 45).
cd "$(dirname "$0")/../../.."; export OMP_NUM_THREADS=2
OUT=${OUT:-/tmp/s49/ev}; mkdir -p $OUT
A="--ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32"
for r in 1 2; do
  order="float packed packed-s48"; [ $r = 2 ] && order="packed-s48 packed float"
  for v in $order; do
    M=/tmp/s45/smol-ptq161; E=""; [ $v = float ] && M=smollm2-135m
    [ $v = packed-s48 ] && E="LLMBIN_LAYER_OPS=torch LLMBIN_CPU_GEMM_SPAN=1"
    l=$(cut -d' ' -f1 /proc/loadavg); s=$(date +%s.%N)
    env $E .venv/bin/llmbin eval $M $A > $OUT/evalcmd-$v-$r.log 2>&1; e=$(date +%s.%N)
    echo "round $r $v wall $(python3 -c "print(round($e-$s,1))") s, $(grep -o 'ppl [0-9.]* (.*' $OUT/evalcmd-$v-$r.log), load at start $l"
  done
done
