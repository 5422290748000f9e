export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
python -m flashtron bench --headdims 64,128 --seqlens 1024,2048,4096,8192,16384 --causal both --impls flashtron,sdpa-cudnn --out $OUT/bench > $OUT/bench.txt 2>&1
tail -44 $OUT/bench.txt
python -m flashtron bench --headdims 128 --seqlens 16384 --causal true --impls flashtron,flashtron-window --out $OUT/b3 > $OUT/b3.txt 2>&1
python experiments/bench_ratio.py $OUT/b3/bench.json
