"""bc.py with DQ_HANDOVER from env HO=0/1 (both head dims); PTX_BAR=1 prints bar/mbarrier counts of the PTX."""
import os, sys
from flashtron.kernels import hopper_backward as hb
ho = bool(int(os.environ.get("HO", "0")))
hb.DQ_HANDOVER.update({64: ho, 128: ho})
exec(open("experiments/s31/bc.py").read())
