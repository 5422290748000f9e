# Session 34 (a): every speed bar of issues 3, 5 and 6 on an H100 (no H100 figures exist before this session).
export PYTHONPATH=.
t0=$(date +%s)
L=$OUT/all.log
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm,power.limit,memory.total --format=csv | tee $L
python -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee -a $L
W="python -m flashtron bench --warmup 1 --rep 1"
S6=1024,2048,4096,8192,16384
# Compile cache warmed in parallel (the GPU is shared meanwhile: no timing from these).
($W --headdims 64 --seqlens $S6 --causal both --impls flashtron --modes fwd,fwd+bwd --out /tmp/w1 > /tmp/w1.log 2>&1) &
($W --headdims 128 --seqlens $S6 --causal both --impls flashtron --modes fwd,fwd+bwd --out /tmp/w2 > /tmp/w2.log 2>&1) &
($W --headdims 256 --seqlens $S6 --causal both --impls flashtron --modes fwd --out /tmp/w3 > /tmp/w3.log 2>&1) &
($W --headdims 128 --seqlens 4096,16384 --causal both --impls flashtron-fp8 --modes fwd --out /tmp/w4 > /tmp/w4.log 2>&1) &
($W --headdims 128 --seqlens 16384 --causal true --impls flashtron-window --modes fwd+bwd --out /tmp/w5 > /tmp/w5.log 2>&1) &
(python -m flashtron bench-decode --cases 1x8192,4x4096 --out /tmp/w6 > /tmp/w6.log 2>&1) &
wait
echo "warm $(( $(date +%s) - t0 )) s" | tee -a $L
grep -h -i "traceback\|error" /tmp/w*.log | head -5 | tee -a $L
mkdir -p $OUT/i3a $OUT/i3b $OUT/dec $OUT/fp8 $OUT/d256 $OUT/i6
B="python -m flashtron bench"
run() { echo "=== $* ($(( $(date +%s) - t0 )) s)" >> $L; timeout ${T:-200} "$@" >> $L 2>&1; echo "rc $?" >> $L; }
run $B --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd --out $OUT/i3a
run python -m flashtron bench-decode --cases 1x131072,64x4096 --out $OUT/dec
run $B --headdims 128 --seqlens 4096,16384 --causal both --impls flashtron,flashtron-fp8 --modes fwd --out $OUT/fp8
run $B --headdims 256 --seqlens $S6 --causal both --impls flashtron,sdpa-cudnn --modes fwd --out $OUT/d256
T=280 run $B --headdims 64,128 --seqlens $S6 --causal both --impls flashtron,sdpa-cudnn --modes fwd,fwd+bwd --out $OUT/i6
run $B --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd --out $OUT/i3b
echo "all $(( $(date +%s) - t0 )) s" | tee -a $L
cd $OUT && tar cf jsons.tar */bench*.json && rm -rf i3a i3b dec fp8 d256 i6
