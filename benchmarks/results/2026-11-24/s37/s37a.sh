python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv
python3 experiments/s37/keras_layer.py 2>&1 | grep -v "UserWarning\|warnings.warn" | tee $OUT/s37a.txt
