#!/bin/bash
# Session 35 (e): the full GPU suite on the committed code, then decoding against cuDNN (issue 5's bench).
export PYTHONPATH=.
FLASHTRON_POISON_OUTPUTS=1 timeout 400 python -m pytest -q -n 8 -m gpu -p no:cacheprovider tests/ > $OUT/s35e-tests.log 2>&1
tail -2 $OUT/s35e-tests.log
timeout 150 python -m flashtron bench-decode --cases 1x131072,64x4096 --out /tmp/s35e-decode > $OUT/s35e-decode.log 2>&1
cp /tmp/s35e-decode/*.json $OUT/ 2>/dev/null; tail -15 $OUT/s35e-decode.log
