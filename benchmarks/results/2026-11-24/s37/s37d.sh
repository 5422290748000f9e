python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
export KERAS_BACKEND=torch
nvidia-smi --query-gpu=name --format=csv,noheader
for i in 1 2; do python3 benchmarks/keras_mha.py --rounds 5 --output $OUT/keras_mha.jsonl 2>&1 | grep -v Warn | tail -1; done
FLASHTRON_POISON_OUTPUTS=1 timeout 420 python3 -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider -W ignore::DeprecationWarning > $OUT/s37d-gpu-suite.txt 2>&1; tail -3 $OUT/s37d-gpu-suite.txt
grep -E "^FAILED|^ERROR" $OUT/s37d-gpu-suite.txt | head
