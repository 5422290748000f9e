"""Session 32 (h): MASK_FIRST at D = 128 (hopper_forward.mask_first true for D = 128 too, every mask), now that a
window's loop has one masked block, against the working tree as committed (1be14a1).  Ran as a full copy of the
harness (s32ab.py)."""
import sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s32")
import s32ab

CASES = [(128, 16384, (1024, 0)), (128, 16384, (256, 0)), (128, 16384, (4096, 0)), (128, 8192, (512, 512)),
         (128, 4096, (1024, 0), 16, True), (128, 16384, (-1, 0)), (128, 4096, (-1, 0))]
s32ab.main(CASES, {"mf": {"mask_first": lambda head_dim: head_dim in (64, 128)}}, "s32h.json", 3208)
