cd /work/main
while [ ! -f /tmp/bench/abcd.done ]; do sleep 10; done
R=benchmarks/results/vllm-cpu
mkdir -p $R/intel-2026-12-04 && git mv -k $R/greedy-smollm2-ptq161.json $R/intel-2026-12-04/ 2>/dev/null; mv $R/greedy-smollm2-ptq161.json $R/results.json $R/logs $R/intel-2026-12-04/ 2>/dev/null
.venv-vllm/bin/python benchmarks/vllm_cpu.py all --pair smollm2 ~/.cache/llmbin/models/smollm2-135m /tmp/bench/smol-ptq161 \
  --pair qwen2.5-coder-0.5b ~/.cache/llmbin/models/qwen2.5-coder-0.5b /tmp/bench/qwen-dbllm --out $R > /tmp/bench/vllm-all.log 2>&1
echo "all exit $?" >> /tmp/bench/vllm-all.log
.venv-vllm/bin/python benchmarks/vllm_cpu.py greedy /tmp/bench/smol-ptq161 --json $R/greedy-smollm2-ptq161.json > /tmp/bench/vllm-greedy.log 2>&1
echo "greedy exit $?" >> /tmp/bench/vllm-greedy.log
echo done > /tmp/bench/vllm.done
