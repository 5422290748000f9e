# Session 29's prepared GPU call (not run: no GPU was lent in session 29).  From the repository root, with
# keys-on-rows.diff applied and HEAD's package copied to experiments/base29 as flashtron_base (see NEXT.md):
#   GPU tests of the backward (the diff's default: KEYS_ON_ROWS[64] on; test_other_step_form_matches_oracle runs
#   the other form), the kernel A/B (s29a.py), then flashtron bench against cuDNN and issue 3's row.
export PYTHONPATH=.
D=$(dirname "$0")
n=$(python $D/s29a.py --count)
echo cases $n
t0=$(date +%s)
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 8 -m gpu tests/test_hopper_backward.py tests/test_hopper_varlen.py -p no:cacheprovider > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log) &
for i in $(seq 0 $((n-1))); do python $D/s29a.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm+tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests.log; grep -l "Error\|error" $OUT/warm*.log | head -3
for f in $(grep -l "Error\|error" $OUT/warm*.log | head -1); do tail -20 $f; done
python $D/s29a.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s29a.log
python -m flashtron bench --headdims 64,128 --seqlens 1024,2048,4096,8192,16384 --causal both --impls flashtron,sdpa-cudnn --modes fwd+bwd --out $OUT/bfb 2>&1 | tail -24
python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd --out $OUT/i3 2>&1 | tail -4
cd $OUT && tar czf out.tgz *.log *.json bfb* i3* 2>/dev/null; rm -f warm*.log
