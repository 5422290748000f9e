# Session 31, first GPU call: compiles in parallel (the stamped backward's, the A/B's) with the backward's GPU tests
# (PREFETCH_KV on in the working tree); then the per-tile profile of HEAD's backward (prof.py); then the A/B (s31a.py).
export PYTHONPATH=.
D=experiments/s31
t0=$(date +%s)
n=$(python $D/s31a.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 6 -m gpu tests/test_hopper_backward.py tests/test_hopper_varlen.py -p no:cacheprovider > $OUT/tests-pf.log 2>&1; echo "tests rc $?" >> $OUT/tests-pf.log) &
for i in 0 2 3; do timeout 300 python $D/prof.py --warm $i > $OUT/pwarm$i.log 2>&1 & done
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s31a.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-pf.log; grep -il "error" $OUT/*warm*.log | head -3
timeout 150 python $D/prof.py > $OUT/prof.log 2>&1; echo "prof rc $?" >> $OUT/prof.log
echo prof $(( $(date +%s) - t0 )) s; grep -v "arn" $OUT/prof.log | head -80
timeout 150 python $D/s31a.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s31a.log
echo all $(( $(date +%s) - t0 )) s
cd $OUT && tar czf out.tgz *.log *.json *.npz 2>/dev/null; rm -f *warm*.log
