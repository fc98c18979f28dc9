cd /work/main; source .venv/bin/activate
export OMP_NUM_THREADS=2
date -u; uptime
/usr/bin/time -v llmbin distill /tmp/s40/db512 -o /tmp/s41/db512-second --dataset /work/shared/data/calib_coqa.txt --set nsamples=512 > /tmp/s41/db512-second.log 2>&1
date -u; uptime
llmbin eval /tmp/s41/db512-second --ppl /work/shared/data/valid_xsum.txt --seqlen 512 --max-windows 128 --json /tmp/s41/db512-second-valid_xsum.json > /tmp/s41/db512-second-valid.log 2>&1
date -u
