set -x
cd /work/main; source .venv/bin/activate
export OMP_NUM_THREADS=2
date -u; uptime
/usr/bin/time -v llmbin quantize smollm2-135m --recipe dbllm-2bit --set distill.nsamples=512 --dataset /work/shared/data/calib_coqa.txt --nsamples 128 --seqlen 512 --seed 0 -o /tmp/s40/db512 > /tmp/s40/db512.log 2>&1
date -u; uptime
llmbin eval /tmp/s40/db512 --ppl /work/shared/data/valid_xsum.txt --seqlen 512 --max-windows 128 --json /tmp/s40/db512-valid_xsum.json > /tmp/s40/db512-valid.log 2>&1
date -u; uptime
