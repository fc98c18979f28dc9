#!/bin/bash
# issue 28, Qwen2.5-Coder-0.5B v2-reduced: the distillation stage on code only (A) against half its windows
# written by the teacher (B), same 32 training + 4 held-out windows of 512, same layers checkpoint; choose on valid_xsum
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=2
S=/tmp/s45
COMMON="--set nsamples=32 --set eval_nsamples=4 --set seqlen=512 --dataset data/networkx-3.3-calib.txt"
echo "== layers only $(date -u +%T)"
llmbin eval $S/q05-db --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 \
   --json $S/eval-layers.json > $S/eval-layers.log 2>&1; tail -4 $S/eval-layers.log
for v in "A" "B selfgen_share=0.5"; do
  set -- $v; name=$1; extra=""; [ -n "$2" ] && extra="--set $2"
  echo "== distill $name $extra $(date -u +%T)"
  /usr/bin/time -v llmbin distill $S/q05-db -o $S/q05-d$name $COMMON $extra > $S/distill-$name.log 2> $S/distill-$name.err
  echo "   rc $? $(date -u +%T)"
  llmbin eval $S/q05-d$name --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 \
     --json $S/eval-$name.json > $S/eval-$name.log 2>&1
  echo "   eval rc $? $(date -u +%T)"; tail -4 $S/eval-$name.log
done
