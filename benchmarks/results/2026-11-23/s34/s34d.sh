export PYTHONPATH=.
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 4 tests/test_transpose.py tests/test_fp8.py -p no:cacheprovider > $OUT/tests-d1.log 2>&1; echo "rc $?" >> $OUT/tests-d1.log) 
(FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 4 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py -k "fp8 or keys" -p no:cacheprovider > $OUT/tests-d2.log 2>&1; echo "rc $?" >> $OUT/tests-d2.log)
tail -2 $OUT/tests-d1.log $OUT/tests-d2.log
timeout 240 python experiments/s34/s34d.py 2>&1 | grep -v Warn | tee $OUT/s34d.log
