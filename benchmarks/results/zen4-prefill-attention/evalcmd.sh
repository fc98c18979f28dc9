#!/bin/bash
# `llmbin eval` itself: float32 against packed (default: llmbin attention) and packed with LLMBIN_ATTENTION=sdpa,
# 2 rounds alternating, alone, 2 threads
cd /work/main; export OMP_NUM_THREADS=2
A="--ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32"
for r in 1 2; do
  order="float packed packed-sdpa"; [ $r = 2 ] && order="packed-sdpa packed float"
  for v in $order; do
    M=/tmp/s45/smol-ptq161; E=""; [ $v = float ] && M=smollm2-135m; [ $v = packed-sdpa ] && E="LLMBIN_ATTENTION=sdpa"
    l=$(cut -d' ' -f1 /proc/loadavg); s=$(date +%s.%N)
    env $E .venv/bin/llmbin eval $M $A > /tmp/s48/ev/evalcmd-$v-$r.log 2>&1; e=$(date +%s.%N)
    echo "round $r $v wall $(python3 -c "print(round($e-$s,1))") s, $(grep -o 'ppl [0-9.]* (.*' /tmp/s48/ev/evalcmd-$v-$r.log), load at start $l"
  done
done
