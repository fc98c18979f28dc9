# usage: paused.sh CMD...: run CMD with the background heavy job stopped; logs pause length
PIDS=$(pgrep -f "llmbin (quantize|eval|distill)")
[ -n "$PIDS" ] && kill -STOP $PIDS
t0=$(date +%s); sleep 1
"$@"
[ -n "$PIDS" ] && kill -CONT $PIDS
echo "paused $(( $(date +%s) - t0 )) s" >> /tmp/s40/pauses.log
