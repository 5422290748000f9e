# Session 31, fifth GPU call: the FP8 GPU tests with test_fp8's new lse bound; the per-tile profile of the new
# backward (experiments/prof31 rebuilt from the working tree with make_prof2.py), windows only.
export PYTHONPATH=.
D=experiments/s31
t0=$(date +%s)
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 6 -m gpu tests/test_gpu.py tests/test_hopper_forward.py tests/test_fp8.py -k fp8 -p no:cacheprovider > $OUT/tests-fp8.log 2>&1; echo "tests rc $?" >> $OUT/tests-fp8.log) &
for i in 0 3; do timeout 300 python $D/prof.py --warm $i > $OUT/pwarm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-fp8.log
PROF_CASES=0,1,3 timeout 150 python $D/prof.py > $OUT/prof2.log 2>&1; echo "prof rc $?" >> $OUT/prof2.log
grep -v "arn\|rep 1\|rep 2" $OUT/prof2.log | head -60
echo all $(( $(date +%s) - t0 )) s
cd $OUT && tar czf out.tgz *.log *.npz 2>/dev/null; rm -f *warm*.log
