cd /work/main; source .venv/bin/activate
export OMP_NUM_THREADS=2
date -u; uptime
/usr/bin/time -v llmbin quantize smollm2-135m --recipe ptq161 --dataset /work/shared/data/calib_coqa.txt --nsamples 128 --seqlen 512 --seed 0 -o /tmp/s41/ptq161-e2e > /tmp/s41/ptq161-e2e.log 2>&1
date -u; uptime
llmbin eval /tmp/s41/ptq161-e2e --ppl /work/shared/data/valid_xsum.txt --seqlen 512 --max-windows 128 --json /tmp/s41/ptq161-e2e-valid_xsum.json > /tmp/s41/ptq161-e2e-valid.log 2>&1
date -u
