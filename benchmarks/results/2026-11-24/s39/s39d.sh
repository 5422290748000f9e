#!/bin/bash
export PYTHONPATH=.
python experiments/s39/s39d.py 3 2>&1 | tee $OUT/s39d.log
for v in 0 1; do
  SPLIT=$([ $v = 1 ] && echo 1) timeout 120 ncu --clock-control none -k regex:hopper_backward_kernel --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section SchedulerStats python experiments/s39/case.py ours 64 4096 0 2>&1 \
    | grep -E "Duration|L2 Cache Throughput|L1/TEX Cache|Issue Slots Busy|Eligible Warps|Compute \(SM\)" | sed "s/^/split=$v /"
done | tee $OUT/s39d-ncu.log
