#!/bin/bash
# Session 35 (c): the full GPU suite on the working tree, then the host anatomy of the new code.
export PYTHONPATH=.
FLASHTRON_POISON_OUTPUTS=1 timeout 420 python -m pytest -q -n 8 -m gpu -p no:cacheprovider tests/ > $OUT/s35c-tests.log 2>&1
tail -3 $OUT/s35c-tests.log
python experiments/s35/s35a.py short 2>&1 | tee $OUT/s35c-anatomy.log | tail -16
