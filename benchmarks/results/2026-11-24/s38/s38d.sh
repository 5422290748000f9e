#!/bin/bash
# Session 38 (d): D = 64 causal forward variants, then the whole GPU suite on the committed code.
PYTHONPATH=. python experiments/s38/s38d.py 2>&1 | tee $OUT/s38d.log | tail -8
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
KERAS_BACKEND=torch FLASHTRON_POISON_OUTPUTS=1 PYTHONPATH=/tmp/site:. python -m pytest -q -n 8 -m gpu tests/ -p no:cacheprovider 2>&1 | tail -8 \
  | tee $OUT/s38d-gpu-suite.log
