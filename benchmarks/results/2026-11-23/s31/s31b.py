"""Session 31 (b): the backward's tile boundary.  EARLY_KV: K and V released right after a tile's last step, dV staged
in the consumer's P tile and its free dS tile instead of V's; LATE_TAKE: the producer takes its next tile after
copying this one's blocks (not before).  Against HEAD (flashtron_base, experiments/base31); ctl = both off (only the
merged P/dS buffer).  `--warm I` / `--count` as abtool."""
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
            "s31b.json", 3102, base_lib=flashtron_base)
