"""Session 31 (f): DEFER_BOXES, the persistent backward sends a tile's dK/dV boxes (staged as before) only once the
next tile's K and V are in, so that the K/V copy does not share the copy engine with them; the next tile's first
step waits for the boxes before writing P.  Against the committed code (flashtron_base, experiments/base31b) and
the working tree with the switch off (ctl).  `--warm I` / `--count` as abtool."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s30"); sys.path.insert(0, "experiments/base31b")
import flashtron_base
import abtool

CASES = [(128, 16384, (1024, 0), False), (128, 16384, (256, 0), False), (128, 16384, (4096, 0), False),
         (128, 8192, (512, 512), False), (64, 16384, (1024, 0), False), (128, 4096, (1024, 0), True)]
abtool.main(CASES, {"ctl": {"DEFER_BOXES": False}, "defer": {"DEFER_BOXES": True}}, "s31f.json", 3106,
            base_lib=flashtron_base)
