#!/bin/bash
# Session 35 (f): issue 6's bar command and issue 3's on the committed code (one call).
export PYTHONPATH=.
timeout 330 python -m flashtron bench --headdims 64,128 --seqlens 1024,2048,4096,8192,16384 --causal both \
  --impls flashtron,sdpa-cudnn --modes fwd,fwd+bwd --out /tmp/s35f-i6 > $OUT/s35f-i6.log 2>&1
cp /tmp/s35f-i6/bench.json $OUT/s35f-i6.json; grep -A 45 "baseline TFLOP" $OUT/s35f-i6.log
timeout 150 python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window \
  --modes fwd+bwd --out /tmp/s35f-i3 > $OUT/s35f-i3.log 2>&1
cp /tmp/s35f-i3/bench.json $OUT/s35f-i3.json; tail -8 $OUT/s35f-i3.log
