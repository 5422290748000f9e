# Session 31, ninth GPU call: the forward's GPU tests with the key-offset masks (the A/B's compiles in parallel),
# then the forward A/B against the committed code (s31h.py).
export PYTHONPATH=.
D=experiments/s31
t0=$(date +%s)
n=$(python $D/s31h.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 6 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py tests/test_gpu.py -k "window or hopper or varlen or local" -p no:cacheprovider > $OUT/tests-fko.log 2>&1; echo "tests rc $?" >> $OUT/tests-fko.log) &
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s31h.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-fko.log; grep -il "error" $OUT/warm*.log | head -3
timeout 150 python $D/s31h.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s31h.log
echo all $(( $(date +%s) - t0 )) s
rm -f $OUT/warm*.log
