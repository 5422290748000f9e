"""Session 32 (b): the forward's key blocks from the last for windows too (the working tree) against HEAD ab0c2e9
(experiments/base32).  Ran as a full copy of the harness (s32ab.py)."""
import sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s32")
sys.path.insert(0, "experiments/base32")
import flashtron_base
import s32ab

CASES = [(128, 16384, (1024, 0)), (128, 16384, (256, 0)), (128, 16384, (4096, 0)), (128, 8192, (512, 512)),
         (64, 16384, (1024, 0)), (128, 16384, (1024, 0), 8), (128, 16384, (100, -1)), (128, 4096, (1024, 0), 16, True),
         (64, 4096, (1024, 0), 32, True), (128, 16384, (-1, 0)), (128, 2048, (1024, 0))]
s32ab.main(CASES, {"new": {}}, "s32b.json", 3202, base_lib=flashtron_base)
