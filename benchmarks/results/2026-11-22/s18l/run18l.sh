export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
FLASHTRON_POISON_OUTPUTS=1 timeout 240 python -m pytest -q -n 8 -m gpu tests/test_hopper_varlen.py tests/test_hopper_backward.py tests/test_varlen.py 2>&1 | tail -3 | tee $OUT/pytest.txt
python experiments/ab18l.py 2>&1 | tee $OUT/ab18l.txt
