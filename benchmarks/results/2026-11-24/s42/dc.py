"""Compile the decoder for sm_90 (no GPU) with HEADS_IN_KEYS on/off; print ptxas registers/spills."""
import os, sys
sys.path.insert(0, "benchmarks/results/2026-11-23/s28"); sys.path.insert(0, "tests")
import torch
import gluon_compile as gc
import compile_local
from flashtron.kernels import hopper_decode as hd
compiled = gc._install(hd, ["hopper_decode_kernel"])
for hik in (1, 0):
    hd.HEADS = hik
    for batch, sq, h, hk, d, ps, causal, splits in [(3, 1, 32, 8, 128, 16, True, 1), (3, 1, 32, 8, 128, 16, False, 4),
                                                    (2, 2, 16, 2, 64, 64, False, 3), (2, 1, 8, 2, 256, 256, False, 1)]:
        q = gc._tensors((batch, sq, h, d))
        k, v = (gc._tensors((40, ps, hk, d)) for _ in range(2))
        su = torch.full((batch,), 100, dtype=torch.int32)
        bt = torch.zeros(batch, 8, dtype=torch.int32)
        if splits > 1:
            out = torch.empty(splits, batch, sq, h, d); lse = torch.empty(splits, batch, h, sq)
        else:
            out, lse = torch.empty_like(q), torch.empty(batch, h, sq)
        n = len(compiled)
        hd._PLANS.clear()
        hd.decode(q, k, v, out, lse, su, bt, d ** -0.5, causal, splits)
        kern = compiled[-1]
        info = compile_local.ptxas_info(kern)
        print(hik, batch, sq, h, hk, d, ps, causal, splits, "HEADS", hd.heads_per_program(q, k), info, flush=True)
