# Session 30's last GPU call, on the code to be committed: the whole GPU suite (poisoned outputs), flashtron bench
# forward+backward against cuDNN, issue 3's bench twice, and bench-varlen (causal, then a window).
export PYTHONPATH=.
t0=$(date +%s)
FLASHTRON_POISON_OUTPUTS=1 timeout 400 python -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider > $OUT/tests.log 2>&1; echo "tests rc $?" >> $OUT/tests.log
echo tests $(( $(date +%s) - t0 )) s; tail -3 $OUT/tests.log
python -m flashtron bench --headdims 64,128 --seqlens 1024,2048,4096,8192,16384 --causal both --impls flashtron,sdpa-cudnn --modes fwd+bwd --out $OUT/bfb 2>&1 | tail -23
for r in 1 2; do python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --modes fwd+bwd --out $OUT/i3r$r 2>&1 | tail -2; done
python -m flashtron bench-varlen --out $OUT/bv 2>&1 | tail -12
cd $OUT && tar czf out.tgz tests.log bfb/*.json i3r*/*.json bv/*.json 2>/dev/null
