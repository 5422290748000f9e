"""Session 30 (b): DQ_FIRST (D = 64: a step issues its dQ part before dV and dK and sends it out while they run)
against the switch off, same process, burn-in, rotated order, 5 rounds, medians of the backward kernel's time.
`--sweep`: issue 3's window backward and forward kernel times against the window's left size (D = 128, 16k, B = 1,
H = 16), to split a tile's fixed cost from its per-step cost.  `--warm I`: only run case I's variants once."""
import os, sys
sys.path.insert(0, os.path.dirname(__file__))
import torch
import flashtron
from torch.profiler import profile, ProfilerActivity
import abtool

CASES = ([(64, S, m, False) for S in (1024, 2048, 4096, 8192, 16384) for m in ("none", "causal")]
         + [(64, 16384, "window", False), (64, 4096, "none", True), (64, 4096, "causal", True)])

if len(sys.argv) > 1 and sys.argv[1] == "--sweep":
    q, k, v = (torch.randn(1, 16384, 16, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn_like(q)
    for left in (256, 512, 1024, 2048, 4096):
        fn = lambda: torch.autograd.grad(flashtron.flash_attn_func(q, k, v, causal=True, window_size=(left, 0)),
                                         (q, k, v), dout)
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        t = {e.key.split("_kernel")[0]: e.device_time_total / e.count for e in prof.key_averages()
             if e.key.startswith("hopper_")}
        print(f"  window ({left}, 0): " + ", ".join(f"{n} {x:.1f} us" for n, x in sorted(t.items())), flush=True)

else:
    abtool.main(CASES, {"dqf": dict(DQ_FIRST=True)}, "s30b.json", 3002, base_knobs=dict(DQ_FIRST=False))
