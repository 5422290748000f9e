"""bc.py with PEEL from env PEEL=0/1 (every mask)."""
import os
from flashtron.kernels import hopper_backward as hb
if "PEEL" in os.environ:
    v = bool(int(os.environ["PEEL"]))
    for key in hb.PEEL:
        hb.PEEL[key] = v and key != (False, False)
exec(open("experiments/s31/bc.py").read())
