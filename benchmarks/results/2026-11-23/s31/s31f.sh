# Session 31, seventh GPU call: GPU tests of the backward with DEFER_BOXES on (the A/B compiles in parallel),
# then the A/B (s31f.py).
export PYTHONPATH=.
D=experiments/s31
t0=$(date +%s)
n=$(python $D/s31f.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 6 -m gpu tests/test_hopper_backward.py tests/test_hopper_varlen.py -p no:cacheprovider > $OUT/tests-defer.log 2>&1; echo "tests rc $?" >> $OUT/tests-defer.log) &
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s31f.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-defer.log; grep -il "error" $OUT/*warm*.log | head -3
timeout 150 python $D/s31f.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s31f.log
echo all $(( $(date +%s) - t0 )) s
cd $OUT && tar czf out.tgz *.log *.json *.npz 2>/dev/null; rm -f *warm*.log
