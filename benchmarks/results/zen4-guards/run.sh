#!/bin/bash
# issue 31, session 45, Zen 4 (AMD EPYC family 25 model 17, AVX-512 VNNI/BF16, no AMX), 2 threads, alone:
# the shipped formats paired with llama.cpp Q4_0 (decode, pp64), eval speed packed vs float32, a decode profile
cd /work/main
export OMP_NUM_THREADS=2
L=.venv/bin/llmbin
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s44; R=/tmp/s45/z4
step() { echo "== $(date -u +%T) start $1 load $(cut -d' ' -f1 /proc/loadavg)"; shift; "$@"; echo "== $(date -u +%T) exit $? "; }
[ -d /tmp/s45/smol-ptq161 ] || step q-ptq161 /usr/bin/time -v $L quantize smollm2-135m --recipe ptq161 --set preprocess.enabled=false --set epochs=1 \
  --set distill.enabled=false --dataset ../shared/data/calib_coqa.txt --nsamples 16 --seqlen 256 --seed 0 -o /tmp/s45/smol-ptq161 -q > $R/quant-smol-ptq161.log 2>&1
for c in smol-ptq161:/tmp/s45/smol-ptq161 smol-gptq4:$S/smol-gptq4; do
  step ${c%%:*} .venv/bin/python benchmarks/decode_vs_llamacpp.py ${c#*:} --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf --rounds 4 --threads 2 --json $R/${c%%:*}.json > $R/${c%%:*}.log 2>&1
done
A="--ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32"
for r in 1 2 3; do
  for v in float packed; do
    M=/tmp/s45/smol-ptq161; [ $v = float ] && M=smollm2-135m
    s=$(date +%s.%N); $L eval $M $A --json $R/eval-$v-$r.json > $R/eval-$v-$r.log 2>&1; e=$(date +%s.%N)
    echo "round $r $v wall $(python3 -c "print(round($e-$s,1))") s load $(cut -d' ' -f1 /proc/loadavg)" | tee -a $R/eval-summary.txt
  done
done
step profdec .venv/bin/python benchmarks/results/zen5-decode/scripts/profdec.py $S/smol-gptq4 > $R/profdec-gptq4.txt 2>&1
