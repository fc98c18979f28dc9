#!/bin/bash
cd /work/main
export PATH=/work/main/.venv/bin:$PATH OMP_NUM_THREADS=2
R=benchmarks/results/qwen-pareto/recipes
QW=~/.cache/llmbin/gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
G=""; for t in Q4_0 Q3_K_S Q2_K IQ2_XXS IQ1_M IQ1_S TQ1_0; do G="$G --gguf $t=/tmp/gg/qwen-$t.gguf"; done
echo "== $(date -u +%T) start"; uptime
/usr/bin/time -v llmbin compare qwen2.5-coder-0.5b --methods gptq-4bit-g32-int5,gptq-3bit-g32-int5,gptq-4bit-g32-int8,dbllm-2bit \
  --recipes gptq-4bit-g32-int5=$R/gptq-4bit-g32-int5.yaml,gptq-3bit-g32-int5=$R/gptq-3bit-g32-int5.yaml,gptq-4bit-g32-int8=$R/gptq-4bit-g32-int8.yaml \
  --set dbllm-2bit.distill.enabled=false $G --gguf Q4_K_M=$QW \
  --dataset data/networkx-3.3-calib.txt --nsamples 32 --seqlen 512 --seed 0 \
  --ppl data/networkx-3.3-eval.txt,/work/shared/data/eval_xsum.txt --max-windows 8 --resume -o /tmp/s37/compare-qwen2
echo "== $(date -u +%T) exit $?"; uptime
touch /tmp/s37/qwen.done
