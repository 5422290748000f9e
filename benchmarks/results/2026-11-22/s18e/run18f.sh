export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
python experiments/ab18e.py 2>&1 | tee $OUT/ab18e.txt
python -m flashtron bench --headdims 64 --seqlens 1024,2048,4096,8192,16384 --causal both --impls flashtron,sdpa-cudnn --out $OUT/bench64 > $OUT/bench64.txt 2>&1
tail -24 $OUT/bench64.txt
