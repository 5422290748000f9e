python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
export KERAS_BACKEND=torch
nvidia-smi --query-gpu=name --format=csv,noheader
python3 experiments/s37/packed.py 2>&1 | tail -5 | tee $OUT/s37f-packed.txt
for i in 1 2; do python3 benchmarks/keras_mha.py --rounds 5 --output $OUT/keras_mha.jsonl 2>&1 | grep -v Warn | tail -1; done
FLASHTRON_POISON_OUTPUTS=1 timeout 400 python3 -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider -W ignore::DeprecationWarning > $OUT/s37f-gpu-suite.txt 2>&1; tail -2 $OUT/s37f-gpu-suite.txt
grep -E "^FAILED|^ERROR" $OUT/s37f-gpu-suite.txt | head
