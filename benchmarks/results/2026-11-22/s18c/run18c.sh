export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 8 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py tests/test_hopper_backward.py 2>&1 | tail -5 | tee $OUT/pytest.txt
python -m flashtron bench --headdims 64 --seqlens 1024,2048,4096,8192,16384 --causal both --impls flashtron,sdpa-cudnn --out $OUT/bench64 > $OUT/bench64.txt 2>&1
tail -30 $OUT/bench64.txt
python experiments/ab18b.py 2>&1 | grep -v "^check" | tee $OUT/ab18b2.txt
