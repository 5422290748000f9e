# Session 32, final GPU call: MASK_FIRST at D = 128 (s32h.py), issue 3's ratio sustained (s32i.py), issue 3's bench x3.
export PYTHONPATH=.
D=experiments/s32
t0=$(date +%s)
n=$(python $D/s32h.py --count)
for i in $(seq 0 $((n-1))); do timeout 300 python $D/s32h.py --warm $i > $OUT/warm$i.log 2>&1 & done; wait
echo warm $(( $(date +%s) - t0 )) s
timeout 150 python $D/s32h.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s32h.log
timeout 100 python $D/s32i.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/s32i.log
I3="--headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd"
for r in 1 2 3; do
  timeout 100 python -m flashtron bench $I3 --out $OUT/i3final$r > $OUT/i3final$r.log 2>&1
  echo i3final$r $(grep -E "flashtron: fwd\+bwd|flashtron-window: fwd" $OUT/i3final$r.log | awk '{print $3}' | tr '\n' ' ')
done
echo all $(( $(date +%s) - t0 )) s
rm -f $OUT/warm*.log $OUT/i3*/bench.png
