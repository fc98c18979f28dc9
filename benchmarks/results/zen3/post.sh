cd /work/main
export OMP_NUM_THREADS=2
B=/tmp/lc/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin
R=benchmarks/results/zen3
mkdir -p $R
/usr/bin/time -v .venv/bin/llmbin quantize smollm2-135m --method gptq --bits 4 --group-size 128 --dataset ../shared/data/calib_coqa.txt --nsamples 16 --seqlen 256 --seed 0 -o /tmp/bench/smol-gptq4 --overwrite -q > /tmp/bench/quant-gptq4.log 2>&1
echo "gptq4 exit $?"
.venv/bin/python benchmarks/load_memory.py /tmp/bench/smol-gptq4 --json $R/load-memory-gptq4.json > /tmp/bench/loadmem.log 2>&1; echo "loadmem exit $?"
.venv/bin/python benchmarks/decode_vs_llamacpp.py /tmp/bench/smol-ptq161 --llama-bench $B/llama-bench --gguf /tmp/lc/smol-Q4_0.gguf --gguf /tmp/lc/smol-F32.gguf --rounds 6 --threads 2 --json $R/decode-prefill-ptq161-vs-llamacpp.json > /tmp/bench/pair-ptq161.log 2>&1; echo "pair ptq161 exit $?"
.venv/bin/python benchmarks/decode_vs_llamacpp.py /tmp/bench/smol-gptq4 --llama-bench $B/llama-bench --gguf /tmp/lc/smol-Q4_0.gguf --rounds 6 --threads 2 --json $R/decode-prefill-gptq4-vs-llamacpp.json > /tmp/bench/pair-gptq4.log 2>&1; echo "pair gptq4 exit $?"
echo done > /tmp/bench/post.done
