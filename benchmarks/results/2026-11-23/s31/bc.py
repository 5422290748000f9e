"""Session 31's backward compile check: session 29's bc.py (D,mask[,varlen]; SASS_OUT, PTX_OUT, WARN) with this
session's experiment switches set from the environment (PREFETCH_KV, EARLY_KV, LATE_TAKE, DEFER_BOXES: 0 or 1, where
the working tree has them) and the working tree first on sys.path: a clean-clone CI run (`pip install -e .` in its
clone) repoints the installed package, and a script's own folder comes first, so for a while this session compiled
the clone's code.  (It ran as a copy of s29/bc.py with those two changes.)"""
import os, sys, runpy
sys.path.insert(0, os.getcwd())
from flashtron.kernels import hopper_backward as hb
for _n in ("PREFETCH_KV", "EARLY_KV", "LATE_TAKE", "DEFER_BOXES"):
    if _n in os.environ:
        setattr(hb, _n, bool(int(os.environ[_n])))
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "s29", "bc.py"), run_name="__main__")
