#!/bin/bash
cd /work/main && source .venv/bin/activate; export OMP_NUM_THREADS=2
C=${1:-/tmp/s45/smol-ptq161}; tag=${2:-smol}
for mode in 0 binarized 1; do
  LLMBIN_CPU_GEMM_INT8=$mode llmbin eval $C --ppl ../shared/data/valid_xsum.txt --seqlen 512 --max-windows 32 --json /tmp/s47/ppl-$tag-$mode.json > /tmp/s47/ppl-$tag-$mode.log 2>&1
  echo "$mode $(grep -o 'valid_xsum.txt: ppl [0-9.]*' /tmp/s47/ppl-$tag-$mode.log) $(python -c "import json;d=json.load(open('/tmp/s47/ppl-$tag-$mode.json'));print({k:v for k,v in d.items() if 'second' in k or 'time' in k})")"
done
