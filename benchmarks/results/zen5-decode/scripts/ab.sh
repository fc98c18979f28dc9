# usage: ab.sh SCRIPT ARGS...: pause the background job, alternate old/new 3 times, resume
source /work/main/.venv/bin/activate
PIDS=$(pgrep -f "llmbin (quantize|eval|distill)")
[ -n "$PIDS" ] && kill -STOP $PIDS
sleep 2
for i in 1 2 3; do
  (cd /tmp/s40/old && PYTHONPATH=/tmp/s40/old OMP_NUM_THREADS=2 python "$@" old)
  (cd /work/main && PYTHONPATH=/work/main OMP_NUM_THREADS=2 python "$@" new)
done
[ -n "$PIDS" ] && kill -CONT $PIDS
