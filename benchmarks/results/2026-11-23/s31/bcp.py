"""Compile flashtron_prof's backward (PROF set) for sm_90 on CPU: smem, regs, spills."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s28"); sys.path.insert(0, "tests"); sys.path.insert(0, "experiments/prof31")
import torch
import gluon_compile as gc
import compile_local
from flashtron_prof.kernels import hopper_backward as hb
from flashtron_prof.kernels import hardware as _hw; _hw.sm_count = lambda device: 132
compiled = gc._install(hb, ["attention_backward_preprocess", "hopper_backward_kernel", "attention_backward_postprocess"])
for spec in sys.argv[1:]:
    d, mask = int(spec.split(",")[0]), spec.split(",")[1]
    hb.PROF = None if "noprof" in spec else torch.empty(10, dtype=torch.int64)
    window = {"none": (-1, -1), "causal": (-1, 0), "window": (1024, 0)}[mask]
    B, S, H = 2, 2048, 2
    q, dout, out, k, v = (gc._tensors((B, S, H, d)) for _ in range(5))
    lse = torch.empty(B, H, S); delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    n = len(compiled)
    hb.backward(dout, q, k, v, out, lse, delta, dq, dk, dv, d ** -0.5, *window, None)
    c = [x for x in compiled[n:] if x.name == "hopper_backward_kernel"][0]
    info = compile_local.ptxas_info(c)
    print(spec, "smem", c.metadata.shared, [l.split(":")[-1].strip() for l in info.splitlines() if "spill" in l or "Used" in l][:6])
