# Session 30's GPU call: the whole GPU suite on the working tree (poisoned outputs) with the A/B's compiles in
# parallel, the A/B (s30a.py), issue 3's per-kernel breakdown, flashtron bench forward+backward against cuDNN and
# issue 3's bench twice.  From the repository root, HEAD's package in experiments/base29 as flashtron_base.
export PYTHONPATH=.
D=$(dirname "$0")
n=$(python $D/s30a.py --count)
echo cases $n
t0=$(date +%s)
(FLASHTRON_POISON_OUTPUTS=1 timeout 400 python -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log) &
for i in $(seq 0 $((n-1))); do python $D/s30a.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests.log; grep -il "error\|abort" $OUT/warm*.log | head -3
for f in $(grep -il "error\|abort" $OUT/warm*.log | head -1); do tail -20 $f; done
python $D/s30a.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s30a.log
python $D/s30a.py --issue3 2>&1 | grep -v "Warn\|warn" | tee $OUT/issue3-kernels.log
python -m flashtron bench --headdims 64,128 --seqlens 1024,2048,4096,8192,16384 --causal both --impls flashtron,sdpa-cudnn --modes fwd+bwd --out $OUT/bfb 2>&1 | tail -24
for r in 1 2; do python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd --out $OUT/i3r$r 2>&1 | tail -2; done
cd $OUT && tar czf out.tgz *.log *.json bfb i3r* 2>/dev/null; rm -f warm*.log
