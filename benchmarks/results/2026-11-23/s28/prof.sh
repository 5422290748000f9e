#!/bin/bash
# ncu profiles of the Hopper kernels, one process per case.  Output under $OUT/prof.
export PYTHONPATH=.
mkdir -p $OUT/prof
ncu --version | head -2
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
run() {  # name kernel-regex args...
  name=$1; kern=$2; shift 2
  timeout 240 ncu --clock-control none -k regex:$kern --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section InstructionStats \
    --section SourceCounters --section ComputeWorkloadAnalysis --section LaunchStats \
    --import-source no -o $OUT/prof/$name -f python experiments/s28/prof_case.py "$@" > $OUT/prof/$name.run.log 2>&1
  echo "$name rc $?"
  ncu --import $OUT/prof/$name.ncu-rep --page details > $OUT/prof/$name.details.txt 2>&1
  ncu --import $OUT/prof/$name.ncu-rep --page source --csv --print-source sass > $OUT/prof/$name.source.csv 2>$OUT/prof/$name.source.err
  ls -la $OUT/prof/$name.* | awk '{print $5, $9}'
}
run f64c16k hopper_forward 64 16384 1 fwd
run f64n16k hopper_forward 64 16384 0 fwd
run b64n2k hopper_backward 64 2048 0 bwd
run fp8n16k hopper_forward 128 16384 0 fwd fp8
run f128n16k hopper_forward 128 16384 0 fwd
