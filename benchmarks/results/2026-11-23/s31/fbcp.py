"""Compile flashtron_prof's forward (PROF set) for sm_90 on CPU: smem, regs, spills."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s28"); sys.path.insert(0, "tests"); sys.path.insert(0, "experiments/prof31")
import torch
import gluon_compile as gc
import compile_local
from flashtron_prof.kernels import hardware as _hw
_hw.sm_count = lambda device: 132
from flashtron_prof.kernels import hopper_forward as hf
compiled = gc._install(hf, ["hopper_forward_kernel"])
for spec in sys.argv[1:]:
    d, mask = int(spec.split(",")[0]), spec.split(",")[1]
    hf.PROF = None if "noprof" in spec else torch.empty(10, dtype=torch.int64)
    window = {"none": (-1, -1), "causal": (-1, 0), "window": (1024, 0)}[mask]
    B, S, H = 1, 16384, 16
    q, k, v = (gc._tensors((B, S, H, d)) for _ in range(3))
    out = torch.empty_like(q); lse = torch.empty(B, H, S)
    n = len(compiled)
    hf.forward(q, k, v, out, lse, d ** -0.5, *window, None)
    c = [x for x in compiled[n:] if x.name == "hopper_forward_kernel"][0]
    info = compile_local.ptxas_info(c)
    print(spec, "smem", c.metadata.shared, [l.split(":")[-1].strip() for l in info.splitlines() if "spill" in l or "Used" in l][:6])
