# Session 32: MASK_FIRST for D = 128 windows: forward/varlen/fp8/variant GPU tests (compiles in parallel), A/B s32j.py.
export PYTHONPATH=.
D=experiments/s32
t0=$(date +%s)
n=$(python $D/s32j.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 6 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py tests/test_fp8.py tests/test_variants.py tests/test_hopper_backward.py -p no:cacheprovider > $OUT/tests-j.log 2>&1; echo "tests rc $?" >> $OUT/tests-j.log) &
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s32j.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-j.log
timeout 200 python $D/s32j.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s32j.log
echo all $(( $(date +%s) - t0 )) s
rm -f $OUT/warm*.log
