# alternate the kernel variants (copies of the llmbin package, each with its edit) on m1mix (6 Qwen-1.5B-shaped layers, M=1, from DRAM), 2 threads; 3 rounds for the prefetch variants, 5 for the others
for round in 1 2 3 4 5; do
  for v in "$@"; do
    d=/tmp/s44/$v
    (cd $d && PYTHONPATH=$d OMP_NUM_THREADS=2 /work/main/.venv/bin/python /work/main/benchmarks/results/zen5-decode/scripts/m1mix.py "$v r$round")
  done
done
