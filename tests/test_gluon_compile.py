"""The Hopper kernels compile for sm_90 from their host code, on any machine.

Gluon has no interpreter, so neither CPU pass runs the Hopper kernels, and only the GPU suite saw them until
now: session 24 changed a helper's arguments and left the paged-decoding kernel calling it the old way, which
the forward and backward GPU runs of the next three sessions did not cover.  tests/gluon_compile.py runs each
family's host function on CPU tensors with launches that only compile, for an sm_90 target (see there); this
runs it in a process of its own, since it swaps Triton's driver.  Once, in the first pass: the interpreter
pass would compile the same kernels again.
"""

import os
import subprocess
import sys

import pytest

from flashtron.kernels import hopper_forward

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(not hopper_forward._GLUON, reason="needs Gluon (Triton >= 3.5)")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="the first pass runs it")
@pytest.mark.parametrize("family", ["forward", "backward", "decode"])
def test_hopper_kernels_compile_for_sm90(family):
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["FLASHTRON_GLUON"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(HERE), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, os.path.join(HERE, "gluon_compile.py"), family], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    assert result.stdout.count(f"hopper_{family}_kernel") >= 3
