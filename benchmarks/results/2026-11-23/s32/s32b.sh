# Session 32, second GPU call: the whole GPU suite with the forward's windows from the last (compiles of the A/B in
# parallel), then the A/B against HEAD (s32b.py), the fixed passes' launch shapes (s32c.py), issue 3's bench new/base x2.
export PYTHONPATH=.
D=experiments/s32
t0=$(date +%s)
n=$(python $D/s32b.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 330 python -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider > $OUT/tests-b.log 2>&1; echo "tests rc $?" >> $OUT/tests-b.log) &
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s32b.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests-b.log; grep -il "error" $OUT/warm*.log | head -3
timeout 150 python $D/s32b.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s32b.log
timeout 60 python $D/s32c.py 2>&1 | tee $OUT/s32c.log
echo ab $(( $(date +%s) - t0 )) s
I3="--headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd"
for r in 1 2; do
  timeout 100 python -m flashtron bench $I3 --out $OUT/i3new$r > $OUT/i3new$r.log 2>&1
  PYTHONPATH=.:experiments/base32 timeout 100 python -m flashtron_base bench $I3 --out $OUT/i3base$r > $OUT/i3base$r.log 2>&1
done
for f in $OUT/i3*.log; do echo $f $(grep -E "flashtron: fwd\+bwd|flashtron-window: fwd" $f | awk '{print $3}' | tr '\n' ' '); done
echo all $(( $(date +%s) - t0 )) s
rm -f $OUT/warm*.log $OUT/i3*/bench.png
