export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
python experiments/ab18d.py 2>&1 | tee $OUT/ab18d.txt
FLASHTRON_POISON_OUTPUTS=1 timeout 420 python -m pytest -q -n 8 -m gpu tests/ 2>&1 | tail -4 | tee $OUT/pytest_all.txt
