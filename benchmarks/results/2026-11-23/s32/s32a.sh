# Session 32, first GPU call: backward window GPU tests with the tail order, A/B (s32a.py), issue-3 bench new/base x2.
export PYTHONPATH=.
D=experiments/s32
t0=$(date +%s)
n=$(python $D/s32a.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 330 python -m pytest -q -n 6 -m gpu tests/test_hopper_backward.py tests/test_hopper_varlen.py tests/test_variants.py -k "window or persistent or local" -p no:cacheprovider > $OUT/tests-a.log 2>&1; echo "tests rc $?" >> $OUT/tests-a.log) &
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s32a.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-a.log; grep -il "error" $OUT/warm*.log | head -3
timeout 150 python $D/s32a.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s32a.log
echo ab $(( $(date +%s) - t0 )) s
I3="--headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd"
for r in 1 2; do
  timeout 100 python -m flashtron bench $I3 --out $OUT/i3new$r > $OUT/i3new$r.log 2>&1
  PYTHONPATH=.:experiments/base32 timeout 100 python -m flashtron_base bench $I3 --out $OUT/i3base$r > $OUT/i3base$r.log 2>&1
done
for f in $OUT/i3*.log; do echo $f; grep -E "window|16384" $f | tail -3; done
echo all $(( $(date +%s) - t0 )) s
rm -f $OUT/warm*.log
