#!/usr/bin/env bash
# Runs the test suite twice: CPU tensors through the PyTorch blockwise path, then
# through the Triton kernels under Triton's interpreter.  Where a GPU is present,
# the GPU suite (marker `gpu`) runs in the first pass.  The interpreter pass runs in two pytest-xdist
# workers (`-n 2`, default `load` distribution: tests, not whole files, go to whichever worker is free, which
# balances better than `loadfile` because test_variants.py alone is about 30% of the pass).  The first pass
# stays in one process: on the CPU it gains nothing from two, and on a GPU two processes would share its
# memory (some tests there take tens of GB).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
TRITON_INTERPRET=1 python -m pytest -q -n 2 -m "not gpu" "$@"
