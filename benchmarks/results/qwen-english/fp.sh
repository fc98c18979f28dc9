#!/bin/bash
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
while pgrep -f distill-ab.sh >/dev/null; do sleep 5; done
llmbin eval qwen2.5-coder-0.5b --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 \
     --json /tmp/s45/eval-fp.json > /tmp/s45/eval-fp.log 2>&1
