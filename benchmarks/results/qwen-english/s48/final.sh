#!/bin/bash
# J beat E on valid_xsum (108.85 against 119.21), so it is scored once on eval_xsum's first 8 x 512 windows and the code text
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
llmbin eval /tmp/s48/q/q05-dJ --ppl data/networkx-3.3-eval.txt,../shared/data/eval_xsum.txt --seqlen 512 --max-windows 8 --json /tmp/s48/q/test-J.json > /tmp/s48/q/test-J.log 2>&1
grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" /tmp/s48/q/test-J.log
