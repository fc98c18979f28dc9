#!/bin/bash
# `llmbin eval` itself, float32 against packed (default activations, then int16), 2 rounds alternating, alone
cd /work/main; export OMP_NUM_THREADS=2
R=benchmarks/results/zen4-int8-binarized
A="--ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32"
for r in 1 2; do
  for v in float packed-default packed-int16; do
    M=/tmp/s45/smol-ptq161; E=""; [ $v = float ] && M=smollm2-135m; [ $v = packed-int16 ] && E="LLMBIN_CPU_GEMM_INT8=0"
    l=$(cut -d' ' -f1 /proc/loadavg); s=$(date +%s.%N)
    env $E .venv/bin/llmbin eval $M $A > /tmp/s47/evalcmd-$v-$r.log 2>&1; e=$(date +%s.%N)
    echo "round $r $v wall $(python3 -c "print(round($e-$s,1))") s, $(grep -o 'ppl [0-9.]* (.*' /tmp/s47/evalcmd-$v-$r.log), load at start $l"
  done
done
