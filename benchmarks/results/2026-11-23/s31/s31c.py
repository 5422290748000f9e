"""Session 31 (c): the backward's tile boundary.  EARLY_KV: K and V released right after a tile's last step, dV
staged in P's tile (grown to 64 x headdim per consumer: 16 KB more at D = 128) instead of V's; LATE_TAKE: the
producer takes its next tile after copying this one's blocks (not before).  Against HEAD (flashtron_base,
experiments/base31); ctl = both off (HEAD's SASS).  `--warm I` / `--count` as abtool."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s30"); sys.path.insert(0, "experiments/base31")
import flashtron_base
import abtool

CASES = [(128, 16384, (1024, 0), False), (128, 16384, (256, 0), False), (128, 16384, (4096, 0), False),
         (128, 8192, (512, 512), False), (64, 16384, (1024, 0), False), (128, 4096, (1024, 0), True),
         (128, 4096, "causal", False), (128, 4096, "none", False), (64, 4096, "none", False)]
off = {"EARLY_KV": False, "LATE_TAKE": False}
abtool.main(CASES, {"ctl": off, "late": {"EARLY_KV": False, "LATE_TAKE": True},
                    "early": {"EARLY_KV": True, "LATE_TAKE": False}, "both": {"EARLY_KV": True, "LATE_TAKE": True}},
            "s31c.json", 3103, base_lib=flashtron_base)
