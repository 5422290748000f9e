"""Compile the FP8 Gluon forward for sm_90 on CPU, PINGPONG on and off: spills and SASS size."""
import os, sys
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/results/2026-11-23/s28"); sys.path.insert(0, "tests")
import torch
import gluon_compile as gc
import compile_local
from flashtron.kernels import hopper_forward as hf, transpose
compiled = gc._install(hf, ["hopper_forward_kernel"])
transpose.keys_innermost_kernel = gc._CompileOnly(transpose.keys_innermost_kernel, [])
for pp in (False, True):
    hf.PINGPONG_FP8 = pp
    for window in ((-1, -1), (-1, 0)):
        B, S, H = 2, 4096, 4
        q, k, v = (gc._tensors((B, S, H, 128), torch.float8_e4m3fn) for _ in range(3))
        out = torch.empty(q.shape, dtype=torch.bfloat16); lse = torch.empty(B, H, S)
        n = len(compiled)
        hf.forward(q, k, v, out, lse, 128 ** -0.5, *window, None, torch.ones(3, B, H))
        c = [x for x in compiled[n:] if x.name == "hopper_forward_kernel"][0]
        info = compile_local.ptxas_info(c)
        sass = c.asm.get("sass") or ""
        print("pingpong", pp, window, "smem", c.metadata.shared,
              [l.split(":")[-1].strip() for l in info.splitlines() if "spill" in l][:2], "cubin", len(c.asm["cubin"]))
