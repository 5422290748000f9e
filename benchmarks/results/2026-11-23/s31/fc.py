"""Compile the working tree's Gluon forward for sm_90 on CPU: smem, spills, SASS size.  usage: fc.py D,mask[,varlen]"""
import os, sys
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/results/2026-11-23/s28"); sys.path.insert(0, "tests")
import torch
import gluon_compile as gc
import compile_local
from flashtron.kernels import hopper_forward as hf
compiled = gc._install(hf, ["hopper_forward_kernel"])
for spec in sys.argv[1:]:
    p = spec.split(",")
    d, mask, varlen = int(p[0]), p[1], len(p) > 2
    window = {"none": (-1, -1), "causal": (-1, 0), "window": (1024, 0), "narrow": (100, 50)}[mask]
    B, S, H = 2, 4096, 4
    q, k, v = (gc._tensors((B, S, H, d)) for _ in range(3))
    out = torch.empty_like(q); lse = torch.empty(B, H, S); ragged = None
    if varlen:
        q, k, v, out = (t.reshape(1, -1, *t.shape[2:]) for t in (q, k, v, out))
        lse = torch.empty(H, B * S)
        cu = torch.arange(0, B + 1, dtype=torch.int32) * S
        ragged = (cu, cu, S, S)
    n = len(compiled)
    hf.forward(q, k, v, out, lse, d ** -0.5, *window, ragged)
    c = [x for x in compiled[n:] if x.name == "hopper_forward_kernel"][0]
    info = compile_local.ptxas_info(c)
    print(spec, "smem", c.metadata.shared, [l.split(":")[-1].strip() for l in info.splitlines() if "spill" in l][:1],
          "sass bytes", len(c.asm["cubin"]))
