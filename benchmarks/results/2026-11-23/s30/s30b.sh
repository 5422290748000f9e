# Session 30's third GPU call: the backward's GPU tests with DQ_FIRST on (the device's copy edited), the A/B
# (s30b.py) with parallel compiles, then issue 3's window sweep.  From the repository root.
export PYTHONPATH=.
D=$(dirname "$0")
n=$(python $D/s30b.py --count)
echo cases $n
t0=$(date +%s)
sed -i 's/^DQ_FIRST = False/DQ_FIRST = True/' flashtron/kernels/hopper_backward.py
grep -n "^DQ_FIRST" flashtron/kernels/hopper_backward.py
FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 8 -m gpu tests/test_hopper_backward.py tests/test_hopper_varlen.py -p no:cacheprovider > $OUT/tests-dqf.log 2>&1; echo "tests rc $?" >> $OUT/tests-dqf.log
sed -i 's/^DQ_FIRST = True/DQ_FIRST = False/' flashtron/kernels/hopper_backward.py
grep -n "^DQ_FIRST" flashtron/kernels/hopper_backward.py
echo tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-dqf.log
for i in $(seq 0 $((n-1))); do python $D/s30b.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm $(( $(date +%s) - t0 )) s; grep -il "error\|abort" $OUT/warm*.log | head -3
python $D/s30b.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s30b.log
python $D/s30b.py --sweep 2>&1 | grep -v "Warn\|warn" | tee $OUT/sweep.log
cd $OUT && tar czf out.tgz *.log *.json 2>/dev/null; rm -f warm*.log
