#!/bin/bash
# Ring at the issue-9 bar's shape (zigzag causal bf16, S = 128k, H = 16, D = 128) on 2 GPUs: default
# (block backward may take the Hopper kernel) against --deterministic (the old behaviour: portable backward).
export PYTHONPATH=.
for flag in "" "--deterministic" ""; do
  timeout 250 torchrun --nproc_per_node=2 benchmarks/ring.py $flag --output $OUT/ring-s40.jsonl 2>&1 | grep -v "^W1124\|OMP_NUM\|\*\*\*" | tail -4
done
