#!/usr/bin/env bash
# Runs the test suite twice: CPU tensors through the PyTorch blockwise path, then
# through the Triton kernels under Triton's interpreter.  Where a GPU is present,
# the GPU suite (marker `gpu`) runs in the first pass.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
TRITON_INTERPRET=1 python -m pytest -q -m "not gpu" "$@"
