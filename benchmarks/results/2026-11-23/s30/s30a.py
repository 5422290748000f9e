"""Session 30 (a): the backward's causal mask in block key offsets (item 2 of session 29's keys-on-rows.diff,
alone) against HEAD (flashtron_base), same process, burn-in, rotated order, 5 rounds, medians of the backward
kernel's time.  `new`: the working tree.  D = 128 none / window and D = 64 none compile to HEAD's SASS (controls:
they show the noise).  Then each kernel's time in one forward+backward of issue 3's two cases (`--issue3`).
`--warm I`: only run case I's variants once (compiles)."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__)); sys.path.insert(0, "experiments/base29")
import torch
import flashtron, flashtron_base
from torch.profiler import profile, ProfilerActivity
import abtool

CASES = ([(128, S, "causal", False) for S in (1024, 2048, 4096, 8192, 16384)]
         + [(128, 4096, "causal", True), (128, 16384, "causal", True), (64, 2048, "causal", False),
            (64, 8192, "causal", False), (64, 4096, "causal", True), (128, 4096, "none", False),
            (128, 16384, "window", False), (64, 4096, "none", False)])

if len(sys.argv) > 1 and sys.argv[1] == "--issue3":
    # Each kernel's device time in one forward+backward, D = 128, 16k, B = 1, H = 16: causal and window (1024, 0).
    for kw in (dict(causal=True), dict(causal=True, window_size=(1024, 0))):
        q, k, v = (torch.randn(1, 16384, 16, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        dout = torch.randn_like(q)
        fn = lambda: torch.autograd.grad(flashtron.flash_attn_func(q, k, v, **kw), (q, k, v), dout)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        total = 0.0
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
            if e.device_time_total > 0:
                total += e.device_time_total / 10
                print(f"  {kw}: {e.key[:60]:60s} {e.device_time_total / 10:9.1f} us per step ({e.count // 10}x)")
        print(f"  {kw}: all kernels {total:.1f} us per step", flush=True)

else:
    abtool.main(CASES, {"new": {}}, "s30a.json", 3001, base_lib=flashtron_base)
