export PYTHONPATH=.
(FLASHTRON_POISON_OUTPUTS=1 timeout 240 python -m pytest -q -n 4 tests/test_fp8.py tests/test_transpose.py -p no:cacheprovider > $OUT/tests-k.log 2>&1; echo "rc $?" >> $OUT/tests-k.log)
(FLASHTRON_POISON_OUTPUTS=1 timeout 240 python -m pytest -q -n 4 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py -k "fp8" -p no:cacheprovider >> $OUT/tests-k.log 2>&1; echo "rc $?" >> $OUT/tests-k.log)
grep -h "passed\|failed\|rc " $OUT/tests-k.log
timeout 280 python experiments/s34/s34k.py 2>&1 | grep -v -i warn | tee $OUT/s34k.log | tail -6
