# Session 31, fourth GPU call, on the code to be committed: the whole GPU suite (poisoned outputs) with the A/B's
# compiles in parallel, the A/B against HEAD (s31d.py), issue 3's bench twice, bench-varlen.
export PYTHONPATH=.
D=experiments/s31
t0=$(date +%s)
n=$(python $D/s31d.py --count)
(FLASHTRON_POISON_OUTPUTS=1 timeout 400 python -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log) &
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s31d.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests.log
timeout 150 python $D/s31d.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s31d.log
for r in 1 2; do python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd --out $OUT/i3r$r 2>&1 | tail -2; done
python -m flashtron bench-varlen --out $OUT/bv 2>&1 | tail -12
echo all $(( $(date +%s) - t0 )) s
cd $OUT && tar czf out.tgz tests.log s31d.log s31d.json i3r*/*.json bv/*.json 2>/dev/null; rm -f warm*.log
