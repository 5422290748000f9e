#!/bin/bash
# GPU correctness: the whole GPU suite, then memcheck on the sanitizer subset.
export PYTHONPATH=.
nvidia-smi --query-gpu=name --format=csv,noheader
FLASHTRON_POISON_OUTPUTS=1 timeout 420 python -m pytest -q -m gpu tests/test_gpu.py -n 4 -p no:cacheprovider 2>&1 | tail -25 | tee $OUT/gpu_suite.log

CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "sanitizer: $CS"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 FLASHTRON_POISON_OUTPUTS=1 timeout 150 $CS --tool memcheck --error-exitcode 9 python -m pytest -q -x -m sanitizer tests/test_gpu.py -k "kvcache or bias or paged" -p no:cacheprovider 2>&1 | tail -6 | tee $OUT/memcheck.log
