"""Session 29 (a), prepared and not run (no GPU was lent in session 29): the backward of keys-on-rows.diff against
HEAD (flashtron_base), same process, burn-in, rotated order, 5 rounds, medians of the backward kernel's time.
`kor`: the diff as it ships (D = 64 with KEYS_ON_ROWS: 128 query rows per step, the scores transposed).
`ctl`: the diff with KEYS_ON_ROWS off (without a causal edge, the same SASS as HEAD; causal builds take the diff's
causal mask form, which at D = 128 removes the loop's spills).  `kor2`: kor with DQ_UNDER_DK (dQ's part issued
before dK, so its way out runs under dK's matmul).  `--warm I`: only run case I's variants once (compiles).
Run in session 30 as written then; since then its harness is session 30's abtool.py (the same code)."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "s30")); sys.path.insert(0, "experiments/base29")
import flashtron_base
import abtool

VARIANTS = {"ctl": dict(KEYS_ON_ROWS={64: False, 128: False}), "kor": dict(KEYS_ON_ROWS={64: True, 128: False}),
            "kor2": dict(KEYS_ON_ROWS={64: True, 128: False}, DQ_UNDER_DK=True)}
CASES = ([(64, S, m, False) for S in (1024, 2048, 4096, 8192, 16384) for m in ("none", "causal")]
         + [(64, 16384, "window", False), (64, 4096, "causal", True), (64, 4096, "none", True),
            (128, 4096, "causal", False), (128, 16384, "window", False), (128, 16384, "none", False)])
abtool.main(CASES, VARIANTS, "s29a.json", 2901, base_lib=flashtron_base)
