# Session 34 (f): FP8 forward in flashtron bench, HEAD (experiments/base34) against the working tree, alternating.
export PYTHONPATH=.
(FLASHTRON_POISON_OUTPUTS=1 timeout 200 python -m pytest -q -n 4 tests/test_transpose.py tests/test_fp8.py tests/test_validation.py -p no:cacheprovider > $OUT/tests-f.log 2>&1; echo "rc $?" >> $OUT/tests-f.log)
(FLASHTRON_POISON_OUTPUTS=1 timeout 200 python -m pytest -q -n 4 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py tests/test_kvcache.py -k "fp8 or keys" -p no:cacheprovider >> $OUT/tests-f.log 2>&1; echo "rc $?" >> $OUT/tests-f.log)
grep -h "passed\|failed\|rc " $OUT/tests-f.log
C="bench --headdims 128 --seqlens 1024,4096,16384 --causal both --impls flashtron,flashtron-fp8 --modes fwd"
for r in 1 2; do
  (cd experiments/base34 && PYTHONPATH=. timeout 150 python -m flashtron $C --out /tmp/b$r > $OUT/base$r.log 2>&1)
  timeout 150 python -m flashtron $C --out /tmp/n$r > $OUT/new$r.log 2>&1
done
for f in base1 new1 base2 new2; do echo "== $f"; grep -A7 "vs flashtron-fp8" $OUT/$f.log; done
