#!/bin/bash
# Session 38 (c): the persistent policy's GPU tests, then issue 6's bench command on the changed code.
set -x
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv
FLASHTRON_POISON_OUTPUTS=1 python -m pytest -q -n 8 -m gpu tests/test_hopper_backward.py tests/test_hopper_varlen.py \
  tests/test_launch_plans.py -p no:cacheprovider 2>&1 | tail -5 | tee $OUT/s38c-tests.log
python -m flashtron bench --headdims 64,128 --seqlens 1024,2048,4096,8192,16384 --causal both \
  --impls flashtron,sdpa-cudnn --modes fwd,fwd+bwd --out $OUT/bench6 2>&1 | tail -60 > $OUT/s38c-bench6.log
cat $OUT/s38c-bench6.log | tail -30
