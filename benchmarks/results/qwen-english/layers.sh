#!/bin/bash
# Qwen2.5-Coder-0.5B, protocol v2-reduced, DB-LLM layers only (compare-v2's dbllm-distill recipe, stage off)
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=2
/usr/bin/time -v llmbin quantize qwen2.5-coder-0.5b --recipe benchmarks/results/compare-v2/recipes/dbllm-distill.yaml \
  --set distill.enabled=false --dataset data/networkx-3.3-calib.txt --nsamples 32 --seqlen 512 --seed 0 \
  -o /tmp/s45/q05-db -q
