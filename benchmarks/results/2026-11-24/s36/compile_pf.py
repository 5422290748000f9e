"""Compile the decode kernel with each PREFETCH mode on the CPU (sm_90 stand-in driver); print SASS stats."""
import sys, os, re
sys.path.insert(0, "tests")
import gluon_compile as gc
from triton.runtime.driver import driver
from flashtron.kernels import hopper_decode
for pf in [int(x) for x in sys.argv[1:]]:
    hopper_decode.PREFETCH = pf
    for label, compiled in gc._decode_cases():
        c = compiled[-1]
        print(pf, label, c.metadata.shared, "regs", getattr(c, "n_regs", None), "spills", getattr(c, "n_spills", None))
        print("   prefetch in ptx:", c.asm["ptx"].count("prefetch.global.L2"), "spills", c.n_spills if hasattr(c, "n_spills") else "?")
        break
        print("   prefetch in ptx:", c.asm["ptx"].count("prefetch.global.L2"), "n_regs", c.n_regs if hasattr(c,"n_regs") else c.metadata)
