export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
python experiments/ab18h.py 2>&1 | tee $OUT/ab18h.txt | grep -v "^check"; grep -c "equal True" $OUT/ab18h.txt
FLASHTRON_POISON_OUTPUTS=1 timeout 300 python -m pytest -q -n 8 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py tests/test_hopper_decode.py tests/test_kvcache.py 2>&1 | tail -3 | tee $OUT/pytest.txt
python -m flashtron bench --headdims 64 --seqlens 4096,8192,16384 --causal true --impls flashtron,sdpa-cudnn --out $OUT/bench64c > $OUT/bench64c.txt 2>&1
tail -9 $OUT/bench64c.txt
