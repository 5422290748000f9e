"""Session 30 (d): the window masks in block key offsets in variable-length builds only (the working tree;
variable-length window at D = 128: 284 bytes of spill stores against 432) against HEAD (flashtron_base, experiments/base30), same process, burn-in,
rotated order, 5 rounds, medians of the backward kernel's time.  Cases (D, S, window, variable-length).
`--warm I`: only run case I's variants once."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__)); sys.path.insert(0, "experiments/base30")
import flashtron_base
import abtool

CASES = [(128, 4096, (1024, 0), True), (128, 16384, (256, 0), True), (128, 8192, (512, 512), True),
         (64, 4096, (1024, 0), True), (128, 16384, (1024, 0), False), (128, 4096, (-1, 0), True)]
abtool.main(CASES, {"new": {}}, "s30d.json", 3004, base_lib=flashtron_base)
