#!/usr/bin/env bash
# llmbin eval speed: float32 model vs packed (default paths) vs packed on the tables only, alternating, 2 rounds
cd /work/main
L=.venv/bin/llmbin
A="--ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32"
: > /tmp/bench/eval-summary.txt
for r in 1 2; do
  for v in float packed packed-tables; do
    case $v in
      float) M=smollm2-135m; E="";;
      packed) M=/tmp/bench/smol-ptq161; E="";;
      packed-tables) M=/tmp/bench/smol-ptq161; E="LLMBIN_CPU_GEMM_MIN_TOKENS=0";;
    esac
    s=$(date +%s.%N)
    env $E $L eval $M $A --json /tmp/bench/eval-$v-$r.json > /tmp/bench/eval-$v-$r.log 2>&1
    e=$(date +%s.%N)
    ppl=$(python3 -c "import json;print(json.load(open('/tmp/bench/eval-$v-$r.json'))['perplexity'][0]['ppl'])" 2>/dev/null)
    echo "round $r $v wall $(python3 -c "print(round($e-$s,1))") s ppl $ppl load $(cut -d' ' -f1 /proc/loadavg)" | tee -a /tmp/bench/eval-summary.txt
  done
done
