#!/bin/bash
# issue 19 acceptance: llmbin bench and llama-bench interleaved, 3 rounds, queue job paused (SIGSTOP)
cd /work/main
export OMP_NUM_THREADS=2
LL=/tmp/llcpp/llama_cpp_python-0.3.36/vendor/llama.cpp
OUT=benchmarks/results/decode-v2
mkdir -p $OUT
/tmp/s5/pause.sh stop; sleep 2
lscpu | grep -E "Model name|^CPU\(s\)|L3" > $OUT/machine.txt
.venv/bin/python -c "import torch; print('torch', torch.__version__)" >> $OUT/machine.txt
for r in 1 2 3; do
  echo "== round $r llmbin bench $(date) load $(cat /proc/loadavg)"
  .venv/bin/llmbin bench /tmp/s4/q/ptq161-pre-p1 --new-tokens 128 --threads 2 --json $OUT/llmbin-bench-round$r.json > $OUT/llmbin-bench-round$r.md 2>$OUT/llmbin-bench-round$r.err; echo "rc $?"
  echo "== round $r llama-bench $(date) load $(cat /proc/loadavg)"
  $LL/build/bin/llama-bench -m /tmp/llcpp/smol-Q4_0.gguf -m /tmp/llcpp/smol-F32.gguf -t 2 -p 64 -n 128 -r 3 -o md > $OUT/llama-bench-round$r.md 2>$OUT/llama-bench-round$r.err; echo "rc $? load $(cat /proc/loadavg)"
done
/tmp/s5/pause.sh cont
echo "== end $(date)"
