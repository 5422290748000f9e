# Session 36 (c): FP8 launch plans. GPU tests, then the FP8 forward bench alternating HEAD (experiments/s36/base)
# and the working tree, twice.
export PYTHONPATH=.
FLASHTRON_POISON_OUTPUTS=1 python -m pytest -q -n 8 -m gpu tests/test_launch_plans.py tests/test_fp8.py \
  tests/test_hopper_forward.py tests/test_transpose.py -p no:cacheprovider 2>&1 | tail -3 | tee $OUT/s36c-tests.log
for r in 1 2; do
  for v in base new; do
    root=$PWD/experiments/s36/base; [ $v = new ] && root=$PWD
    (cd $root && PYTHONPATH=$root python -m flashtron bench --headdims 128 --seqlens 1024,4096,16384 --causal both \
      --impls flashtron,flashtron-fp8 --modes fwd --out /tmp/$v$r) > $OUT/s36c-$v$r.log 2>&1
    grep -A12 "TFLOP" $OUT/s36c-$v$r.log | tail -14
  done
done
