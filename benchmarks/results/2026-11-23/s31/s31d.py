"""Session 31 (d): the code to be committed (the persistent backward releases K and V before its epilogue, dV out
through P's tile, and takes its next tile late) against HEAD (flashtron_base, experiments/base31), same process.
`--warm I` / `--count` as abtool."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s30"); sys.path.insert(0, "experiments/base31")
import flashtron_base
import abtool

CASES = [(128, 16384, (1024, 0), False), (128, 16384, (256, 0), False), (128, 16384, (4096, 0), False),
         (128, 8192, (512, 512), False), (64, 16384, (1024, 0), False), (128, 4096, (1024, 0), True),
         (64, 4096, (1024, 0), True), (128, 4096, "causal", False), (64, 4096, "none", False)]
abtool.main(CASES, {"new": {}}, "s31d.json", 3104, base_lib=flashtron_base)
