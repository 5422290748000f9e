# Session 33 (a): DQ_TAIL. Backward GPU tests (poisoned outputs) while the A/B compiles, then the A/B.
export PYTHONPATH=.
D=experiments/s33
t0=$(date +%s)
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv,noheader
n=$(python $D/s33a.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 330 python -m pytest -q -n 6 -m gpu tests/test_hopper_backward.py tests/test_variants.py -k "window or persistent or oracle" -p no:cacheprovider > $OUT/tests-a.log 2>&1; echo "tests rc $?" >> $OUT/tests-a.log) &
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s33a.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -4 $OUT/tests-a.log; grep -l -i "error\|Traceback" $OUT/warm*.log && tail -20 $OUT/warm0.log
timeout 240 python $D/s33a.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s33a.log
echo all $(( $(date +%s) - t0 )) s
rm -f $OUT/warm*.log
