#!/bin/bash
# after h.sh: the layer variant with the lowest valid_xsum (layers only) gets E's stage (64 code windows);
# scored on the test texts once only if its valid_xsum after the stage beats E's 119.21
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
while pgrep -f "h.sh|fg.sh" >/dev/null; do sleep 5; done
S=/tmp/s46/q
best=$(python3 - <<'PY'
import json
c = {"C": 155.043}
for v in "FGH":
    try:
        d = json.load(open(f"/tmp/s46/q/eval-layers-{v}.json"))
        c[v] = [p["ppl"] for p in d["perplexity"] if "xsum" in p["name"]][0]
    except Exception:
        pass
print(min(c, key=c.get))
PY
)
echo "== best layers by valid_xsum: $best $(date -u +%T)"
[ "$best" = C ] && { echo "C stays best: nothing to run"; exit 0; }
echo "== $best distill $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
/usr/bin/time -v llmbin distill $S/q05-$best -o $S/q05-d$best --set nsamples=64 --set eval_nsamples=4 --set seqlen=512 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-$best.log 2> $S/distill-$best.err
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-d$best --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-$best.json > $S/eval-$best.log 2>&1
v=$(python3 -c "import json; d=json.load(open('$S/eval-$best.json')); print([p['ppl'] for p in d['perplexity'] if 'xsum' in p['name']][0])")
echo "   valid_xsum $v $(date -u +%T)"
if python3 -c "import sys; sys.exit(0 if $v < 119.211 else 1)"; then
  echo "== test scoring of $best $(date -u +%T)"
  llmbin eval $S/q05-d$best --ppl data/networkx-3.3-eval.txt,../shared/data/eval_xsum.txt --seqlen 512 --max-windows 8 --json $S/test-$best.json > $S/test-$best.log 2>&1
  grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/test-$best.log
fi
echo "== done $(date -u +%T)"
