"""Session 24 (d): what the masks cost the forward.  HEAD against a build whose edge blocks skip the mask (wrong
outputs, timing only), forward alone, same process, 3 interleaved rounds (best of the medians)."""
import os, sys
for d in ("experiments/base24", "experiments/s24/pk_nomask"):
    sys.path.insert(0, d)
import torch, triton.testing
import flashtron_base, flashtron_nomask
print(torch.cuda.get_device_name(), flush=True)
for D, S, mask in [(128, 16384, "window"), (128, 16384, "causal"), (128, 1024, "causal"), (64, 1024, "causal")]:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (1024, 0)
    fns = {"base": lambda: flashtron_base.flash_attn_func(q, k, v, **kw),
           "nomask": lambda: flashtron_nomask.flash_attn_func(q, k, v, **kw)}
    ms = {n: [] for n in fns}
    for r in range(3):
        for n, f in fns.items():
            ms[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median"))
    best = {n: min(x) for n, x in ms.items()}
    print(f"D{D} S{S} {mask}: base {best['base'] * 1e3:.1f} us nomask {best['nomask'] * 1e3:.1f} us "
          f"-> masks cost {best['base'] / best['nomask'] - 1:+.1%}", flush=True)
