export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
python experiments/ab18i.py 2>&1 | tee $OUT/ab18i.txt | grep -v "^check"; grep -c "equal True" $OUT/ab18i.txt
FLASHTRON_POISON_OUTPUTS=1 timeout 200 python -m pytest -q -n 8 -m gpu tests/test_hopper_forward.py tests/test_hopper_varlen.py 2>&1 | tail -2 | tee $OUT/pytest.txt
