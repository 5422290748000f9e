"""Session 31 (h): the forward's masks in block key offsets for every mask (`_masked`: windows and the sequence's
end, as causal already had) against the committed code (flashtron_base, experiments/base31b), same process, forward
kernel time (abtool's harness, forward kernel).  `--warm I` / `--count` as abtool."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s30"); sys.path.insert(0, "experiments/base31b")
import flashtron_base
import abtool

_time = abtool.kernel_time
abtool.kernel_time = lambda fn, name="hopper_forward_kernel", reps=6: _time(fn, name, reps)
CASES = [(128, 16384, (1024, 0), False), (128, 16384, (256, 0), False), (128, 16384, (4096, 0), False),
         (128, 8192, (512, 512), False), (64, 16384, (1024, 0), False), (128, 4096, (1024, 0), True),
         (128, 4096, "none", True), (128, 4096, "none", False), (64, 4096, "none", False), (128, 4096, "causal", False)]
abtool.main(CASES, {"new": {}}, "s31h.json", 3108, base_lib=flashtron_base)
