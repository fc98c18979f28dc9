#!/bin/bash
# issue 31, session 45, Zen 4 (family 25 model 17), 2 threads, alone: the guard-free compiled step (new, working tree)
# against HEAD 9b49a9f (old: guards skipped by set_stance), each paired with llama.cpp Q4_0; alternating old/new
cd /work/main
export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
S=/tmp/s44; R=/tmp/s45/z4/guards; mkdir -p $R
for round in 1 2; do
  for c in smol-gptq4:$S/smol-gptq4 smol-ptq161:/tmp/s45/smol-ptq161; do
    for v in old new; do
      P=/work/main; [ $v = old ] && P=/tmp/s45/base
      echo "== $(date -u +%T) $round ${c%%:*} $v load $(cut -d' ' -f1 /proc/loadavg)"
      env PYTHONPATH=$P .venv/bin/python benchmarks/decode_vs_llamacpp.py ${c#*:} --llama-bench $B/llama-bench --gguf $S/smol-Q4_0.gguf \
        --rounds 3 --threads 2 --json $R/${c%%:*}-$v-$round.json > $R/${c%%:*}-$v-$round.log 2>&1
      grep -A3 '"llmbin_mean"' $R/${c%%:*}-$v-$round.json | tr -d '\n '; echo
    done
  done
done
