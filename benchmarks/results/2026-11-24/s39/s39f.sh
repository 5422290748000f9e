#!/bin/bash
export PYTHONPATH=.
python experiments/s39/s39f.py 3 64 2>&1 | tee $OUT/s39f-64.log | tail -11
python experiments/s39/s39f.py 3 128 2>&1 | tee $OUT/s39f-128.log | tail -11
