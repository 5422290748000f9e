"""Session 32 (j): MASK_FIRST for D = 128 windows (the working tree) against 1be14a1 (experiments/base32b), 7
rounds.  Ran as a full copy of the harness (s32ab.py)."""
import sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s32")
sys.path.insert(0, "experiments/base32b")
import flashtron_base
import s32ab

CASES = [(128, 16384, (1024, 0)), (128, 16384, (256, 0)), (128, 16384, (4096, 0)), (128, 8192, (512, 512)),
         (128, 16384, (1024, 0), 8), (128, 16384, (100, -1)), (128, 4096, (1024, 0), 16, True), (128, 16384, (1024, 0)),
         (128, 2048, (1024, 0))]
s32ab.main(CASES, {"new": {}}, "s32j.json", 3210, base_lib=flashtron_base, rounds=7)
