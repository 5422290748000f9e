"""Session 30 (c): the backward's window masks in block key offsets too (`window-key-offsets.diff`: ptxas spills
more, 196 against 148 bytes at D = 128) against HEAD (flashtron_base, experiments/base30), same process, burn-in,
rotated order, 5 rounds, medians of the backward kernel's time.  Cases (D, S, window, variable-length).
`--warm I`: only run case I's variants once."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__)); sys.path.insert(0, "experiments/base30")
import flashtron_base
import abtool

CASES = [(128, 16384, (1024, 0), False), (128, 16384, (256, 0), False), (128, 16384, (4096, 0), False),
         (128, 8192, (512, 512), False), (128, 4096, (1024, 0), True), (64, 16384, (1024, 0), False),
         (128, 4096, (-1, 0), False)]
abtool.main(CASES, {"new": {}}, "s30c.json", 3003, base_lib=flashtron_base)
