#!/bin/bash
# issue 28, Qwen2.5-Coder-0.5B at <= 1.65 bits: the shipped ptq161 recipe (preprocessing on) at protocol v2-reduced,
# layers calibrated on 16 code + 16 selfgen windows (calibration.selfgen_share=0.5, DB-LLM's C/E choice), then a
# 64-window code stage (E's). Valid texts after each step; the test texts once at the end (final step).
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
S=/tmp/s47
echo "== P layers $(date -u +%T)"
/usr/bin/time -v llmbin quantize qwen2.5-coder-0.5b --method ptq161 --set distill.enabled=false \
  --set calibration.selfgen_share=0.5 --set pipeline.embeddings=none --set pipeline.head=none \
  --dataset data/networkx-3.3-calib.txt --nsamples 32 --seqlen 512 --seed 0 -o $S/q05-pP -q > $S/layersP.log 2>&1
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-pP --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-layersP.json > $S/eval-layersP.log 2>&1
grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-layersP.log
echo "== P distill $(date -u +%T)"
/usr/bin/time -v llmbin distill $S/q05-pP -o $S/q05-dP --set nsamples=64 --set eval_nsamples=4 --set seqlen=512 \
  --dataset data/networkx-3.3-calib.txt > $S/distill-P.log 2> $S/distill-P.err
echo "   rc $? $(date -u +%T)"
llmbin eval $S/q05-dP --ppl data/networkx-3.3-eval.txt,../shared/data/valid_xsum.txt --seqlen 512 --max-windows 8 --json $S/eval-P.json > $S/eval-P.log 2>&1
grep -o "[a-z_./0-9-]*txt: ppl [0-9.]*" $S/eval-P.log
echo "== done $(date -u +%T)"
