# Session 34 (i): FP8 after the change on an H200: kernels by the profiler (s34e.py), and the bench's FP8 rows twice.
export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python experiments/s34/s34e.py 2>&1 | grep -v -i warn | tee $OUT/s34i-e.log | tail -8
for r in 1 2; do
  timeout 150 python -m flashtron bench --headdims 128 --seqlens 4096,16384 --causal both --impls flashtron,flashtron-fp8 --modes fwd --out /tmp/f$r > $OUT/s34i-bench$r.log 2>&1
  grep -A7 "vs flashtron-fp8" $OUT/s34i-bench$r.log
done
