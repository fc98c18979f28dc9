cd /work/main; source .venv/bin/activate
export OMP_NUM_THREADS=2
date -u; uptime
/usr/bin/time -v llmbin quantize smollm2-135m --recipe ptq161 --set distill.enabled=false --dataset /work/shared/data/calib_coqa.txt --nsamples 128 --seqlen 512 --seed 0 -o /tmp/s40/ptq161-base > /tmp/s40/ptq161-base.log 2>&1
date -u; uptime
llmbin eval /tmp/s40/ptq161-base --ppl /work/shared/data/valid_xsum.txt --seqlen 512 --max-windows 128 --json /tmp/s40/ptq161-base-valid_xsum.json > /tmp/s40/ptq161-base-valid.log 2>&1
date -u
