"""Compile the FP8 forward at each FP8_SHAPE on the CPU (sm_90 stand-in); ptxas -v registers and spills."""
import sys, subprocess, tempfile, os
sys.path.insert(0, "tests")
import torch
import gluon_compile as gc
from flashtron.kernels import hopper_forward, transpose
PTXAS = os.path.join(os.path.dirname(__import__("triton").__file__), "backends/nvidia/bin/ptxas")
compiled = gc._install(hopper_forward, ["hopper_forward_kernel"])
transpose.keys_innermost_kernel = gc._CompileOnly(transpose.keys_innermost_kernel, compiled)
for spec in sys.argv[1:]:
    hopper_forward.FP8_SHAPE = tuple(int(x) for x in spec.split(","))
    for causal in (False, True):
        b, s, h, d = 1, 4096, 2, 128
        q, k, v = (torch.randn(b, s, h, d).to(torch.float8_e4m3fn) for _ in range(3))
        out = torch.empty(b, s, h, d, dtype=torch.bfloat16)
        lse = torch.empty(b, h, s)
        descale = torch.ones(3, b, h)
        hopper_forward.forward(q, k, v, out, lse, d ** -0.5, -1, 0 if causal else -1, None, descale)
        c = [x for x in compiled if x.name == "hopper_forward_kernel"][-1]
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(c.asm["ptx"])
        r = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"], capture_output=True, text=True)
        lines = [l for l in r.stderr.splitlines() if "spill" in l or "Used" in l]
        print(spec, "causal" if causal else "full", c.metadata.shared, "|", " ".join(l.strip() for l in lines))
