"""Session 31 (a): the persistent backward's producer prefetches its next tile's K and V into L2 (PREFETCH_KV)
against HEAD (flashtron_base, experiments/base31) and the working tree with the switch off (ctl), same process.
`--warm I` / `--count` as abtool."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s30"); sys.path.insert(0, "experiments/base31")
import flashtron_base
import abtool

CASES = [(128, 16384, (1024, 0), False), (128, 16384, (256, 0), False), (128, 16384, (4096, 0), False),
         (128, 8192, (512, 512), False), (64, 16384, (1024, 0), False), (128, 4096, (1024, 0), True)]
abtool.main(CASES, {"ctl": {"PREFETCH_KV": False}, "pf": {"PREFETCH_KV": True}}, "s31a.json", 3101, base_lib=flashtron_base)
