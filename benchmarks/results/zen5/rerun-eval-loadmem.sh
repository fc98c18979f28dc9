#!/bin/bash
# run.sh's eval round 2 overlapped another job (load average 2.5-3.0): rounds 2 and 3 again, alone; and the load
# memory again after the malloc_trim change (trim after every 4 MB of layers repacked, not only after 4 MB layers)
cd /work/main
export OMP_NUM_THREADS=2
L=.venv/bin/llmbin
S=/tmp/s39; R=$S/res
.venv/bin/python -P benchmarks/load_memory.py $S/smol-gptq4 --json $R/load-memory-gptq4.json > $R/loadmem.log 2>&1
A="--ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32"
for r in 2 3; do
  for v in float packed; do
    M=$S/smol-ptq161; [ $v = float ] && M=smollm2-135m
    s=$(date +%s.%N); $L eval $M $A --json $R/eval-$v-$r.json > $R/eval-$v-$r.log 2>&1; e=$(date +%s.%N)
    echo "round $r (rerun) $v wall $(python3 -c "print(round($e-$s,1))") s load $(cut -d' ' -f1 /proc/loadavg)" | tee -a $R/eval-summary.txt
  done
done
touch $S/rerun.done
