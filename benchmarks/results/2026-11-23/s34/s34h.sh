# Session 34 (h): the GPU suite on the final code, issue 3's steps by kernel, and the FP8 bench rows.
export PYTHONPATH=.
t0=$(date +%s)
FLASHTRON_POISON_OUTPUTS=1 timeout 420 python -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider > $OUT/tests-gpu.log 2>&1; echo "rc $?" >> $OUT/tests-gpu.log
tail -n 4 $OUT/tests-gpu.log; echo "tests $(( $(date +%s) - t0 )) s"
timeout 60 python experiments/s34/s34g.py 2>&1 | grep -v Warn | tee $OUT/s34g.log
timeout 100 python -m flashtron bench --headdims 128 --seqlens 1024,4096,16384 --causal both --impls flashtron,flashtron-fp8 --modes fwd --out /tmp/f > $OUT/fp8-final.log 2>&1
grep -A8 "vs flashtron-fp8" $OUT/fp8-final.log; echo "all $(( $(date +%s) - t0 )) s"
