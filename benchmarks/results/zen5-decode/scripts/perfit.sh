python /tmp/s40/loopdec.py /tmp/s39/smol-gptq4 14 > /tmp/s40/loop.out 2>&1 &
P=$!
while ! grep -q READY /tmp/s40/loop.out; do sleep 0.5; done; sleep 1
perf record -F 2000 -g -p $P -o /tmp/s40/perf.data -- sleep 6 > /tmp/s40/perf.rec.log 2>&1
wait
