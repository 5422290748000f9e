"""Session 32 (a): the backward's window tile order (TAIL_LAST: each head's short last key blocks taken after all
others; `tail-last.diff`) and the forward's FROM_LAST for windows (WINDOW_FROM_LAST, a switch then), against HEAD
ab0c2e9 (experiments/base32).  Ran as a full copy of the harness (s32ab.py)."""
import sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s32")
sys.path.insert(0, "experiments/base32")
import flashtron_base
import s32ab

CASES = [(128, 16384, (1024, 0)), (128, 16384, (256, 0)), (128, 16384, (4096, 0)), (128, 8192, (512, 512)),
         (64, 16384, (1024, 0)), (128, 16384, (1024, 0), 8)]  # last: GQA, 8 kv heads of 16
VARIANTS = {"tail": dict(TAIL_LAST=True, WINDOW_FROM_LAST=False),
            "tail+fl": dict(TAIL_LAST=True, WINDOW_FROM_LAST=True), "fl": dict(TAIL_LAST=False, WINDOW_FROM_LAST=True)}
s32ab.main(CASES, VARIANTS, "s32a.json", 3201, base_lib=flashtron_base)
