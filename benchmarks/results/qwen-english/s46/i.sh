#!/bin/bash
# issue 28, session 46: C's layers (session 45) with a 128-window stage on code (E had 64); chosen on valid_xsum;
# scored on the test texts once only if it beats E's valid_xsum 119.21
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
while pgrep -f "cleantest.sh" >/dev/null; do sleep 5; done
S=/tmp/s46/q
echo "== I distill $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
/usr/bin/time -v llmbin distill /tmp/s45/q05-dbC -o $S/q05-dI --set nsamples=128 --set eval_nsamples=4 --set seqlen=512 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-I.log 2> $S/distill-I.err
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dI --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-I.json > $S/eval-I.log 2>&1
v=$(python3 -c "import json; d=json.load(open('$S/eval-I.json')); print([p['ppl'] for p in d['perplexity'] if 'xsum' in p['name']][0])")
echo "   valid_xsum $v $(date -u +%T)"
if python3 -c "import sys; sys.exit(0 if $v < 119.211 else 1)"; then
  echo "== test scoring of I $(date -u +%T)"
  llmbin eval $S/q05-dI --ppl data/networkx-3.3-eval.txt,../shared/data/eval_xsum.txt --seqlen 512 --max-windows 8 --json $S/test-I.json > $S/test-I.log 2>&1
  grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/test-I.log
fi
echo "== done $(date -u +%T)"
