# Session 30's fourth GPU call: the backward's GPU tests with window-key-offsets.diff applied (the working tree),
# with the A/B's compiles in parallel, then the A/B (s30c.py) against HEAD's package in experiments/base30.
export PYTHONPATH=.
D=$(dirname "$0")
n=$(python $D/s30c.py --count)
echo cases $n
t0=$(date +%s)
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 8 -m gpu tests/test_hopper_backward.py tests/test_hopper_varlen.py -p no:cacheprovider > $OUT/tests-wko.log 2>&1; echo "tests rc $?" >> $OUT/tests-wko.log) &
for i in $(seq 0 $((n-1))); do python $D/s30c.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-wko.log; grep -il "error" $OUT/warm*.log | head -3
python $D/s30c.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s30c.log
cd $OUT && tar czf out.tgz *.log *.json 2>/dev/null; rm -f warm*.log
