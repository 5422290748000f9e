#!/bin/bash
# Session 35 (b): GPU tests of the launch plans and the Hopper files, then host-time A/B (HEAD copy vs tree).
export PYTHONPATH=.
FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 8 -m gpu -p no:cacheprovider tests/test_launch_plans.py \
  tests/test_compiled.py tests/test_hopper_forward.py tests/test_hopper_backward.py tests/test_hopper_varlen.py \
  > $OUT/s35b-tests.log 2>&1; tail -3 $OUT/s35b-tests.log
for r in 1 2; do
  for which in base new; do
    root=.; [ $which = base ] && root=experiments/s35/base
    echo "== $which $r"; python experiments/s35/s35b.py $root 2>&1 | tee $OUT/s35b-$which$r.log | tail -5
  done
done
