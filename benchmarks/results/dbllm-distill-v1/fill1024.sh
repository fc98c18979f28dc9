set -x
cd /work/main; source .venv/bin/activate
export OMP_NUM_THREADS=2
date -u; uptime
/usr/bin/time -v llmbin quantize smollm2-135m --recipe dbllm-2bit --set distill.nsamples=1024 --set distill.fill=selfgen --dataset /work/shared/data/calib_coqa.txt --nsamples 128 --seqlen 512 --seed 0 -o /tmp/s42/db1024 > /tmp/s42/db1024.log 2>&1
date -u; uptime
llmbin eval /tmp/s42/db1024 --ppl /work/shared/data/valid_xsum.txt --seqlen 512 --max-windows 128 --json /tmp/s42/db1024-valid_xsum.json > /tmp/s42/db1024-valid.log 2>&1
date -u; uptime
