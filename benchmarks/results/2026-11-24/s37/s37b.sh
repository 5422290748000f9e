python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
export KERAS_BACKEND=torch
nvidia-smi --query-gpu=name --format=csv,noheader
FLASHTRON_POISON_OUTPUTS=1 python3 -m pytest -q -m gpu tests/test_keras.py -p no:cacheprovider -W ignore::DeprecationWarning 2>&1 | tail -15 | tee $OUT/s37b-test.txt
for i in 1 2; do python3 benchmarks/keras_mha.py --rounds 5 --output $OUT/keras_mha.jsonl 2>&1 | grep -v Warn | tail -1; done
