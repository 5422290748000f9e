#!/bin/bash
# Session 39 (c): cuDNN's attention kernels against ours: per-kernel times (torch profiler) and ncu launch stats,
# pipe utilisation and shared-memory traffic of the D = 64 backward (4k, no mask) and forward.
export PYTHONPATH=.
mkdir -p $OUT/prof
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv
for c in "64 4096 0" "64 16384 1" "128 2048 1" "128 16384 0"; do
  for impl in cudnn ours; do python experiments/s39/case.py $impl $c table 2>&1 | grep -v "^done"; done
done > $OUT/kernel-tables.txt
tail -n +1 $OUT/kernel-tables.txt | grep -E "==|Self CUDA|^\s*(cudnn|hopper|attention|void|sm90|_|[a-z])" | cut -c1-160 | head -80
run() {  # name kernel-regex args...
  name=$1; kern=$2; shift 2
  timeout 200 ncu --clock-control none -k regex:$kern --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section InstructionStats \
    -o $OUT/prof/$name -f python experiments/s39/case.py "$@" > $OUT/prof/$name.run.log 2>&1
  echo "$name rc $?"
  ncu --import $OUT/prof/$name.ncu-rep --page details > $OUT/prof/$name.details.txt 2>&1
}
run cudnn_b64n4k "(?i)(cudnn|sdpa).*(bprop|bwd|dgrad|backward)" cudnn 64 4096 0
run ours_b64n4k hopper_backward_kernel ours 64 4096 0
run cudnn_f64n4k "(?i)(cudnn|sdpa).*(fprop|fwd|forward)" cudnn 64 4096 0
run ours_f64n4k hopper_forward_kernel ours 64 4096 0
cd $OUT/prof && tar czf ../prof.tgz *.details.txt *.run.log && cd - > /dev/null
for f in $OUT/prof/*.details.txt; do echo "=== $f"; grep -E "^\s+[a-z_]+.*(sdpa|cudnn|hopper|kernel)|Block Size|Grid Size|Registers Per|Shared Memory Config|Dynamic Shared|Duration|Compute \(SM\) Throughput|Memory Throughput|Executed Ipc|Issue Slots Busy|Shared Memory   |L1/TEX Hit|Warp Cycles Per Issued|No Eligible|Theoretical Occupancy|Achieved Occupancy|Waves Per SM|Threads  " $f | head -40; done
