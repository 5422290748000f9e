#!/bin/bash
# Session 35 (d): GPU tests of the plans (decode included), then issue 6's short cells in `flashtron bench`,
# HEAD's copy and the working tree alternating.
export PYTHONPATH=.
FLASHTRON_POISON_OUTPUTS=1 timeout 240 python -m pytest -q -n 8 -m gpu -p no:cacheprovider tests/test_launch_plans.py \
  tests/test_hopper_decode.py tests/test_kvcache.py tests/test_compiled.py > $OUT/s35d-tests.log 2>&1
tail -2 $OUT/s35d-tests.log
for r in 1 2; do
  for which in new base; do
    root=$PWD; [ $which = base ] && root=$PWD/experiments/s35/base
    echo "== $which $r"
    (cd $root && PYTHONPATH=$root timeout 200 python -m flashtron bench --headdims 64,128 --seqlens 1024,2048 \
      --causal both --impls flashtron,sdpa-cudnn --modes fwd,fwd+bwd --out /tmp/s35d-$which$r > /tmp/s35d-$which$r.log 2>&1)
    cp /tmp/s35d-$which$r/bench.json $OUT/s35d-$which$r.json; tail -24 /tmp/s35d-$which$r.log
  done
done
