"""Session 25 (c): where the D = 64 backward's time goes.  Timing-only builds of HEAD's backward (wrong gradients):
store = dQ parts written with a plain TMA store instead of the reduce-add; noout = dQ parts not sent at all;
noexp = P = S * scale - lse without exp2; nodq = no dQ matmul and nothing sent.  Backward kernel time from the
profiler, same process, 3 interleaved rounds (best)."""
import os, sys, json
sys.path.insert(0, "experiments/base25")
for v in ("store", "noout", "noexp", "nodq"):
    sys.path.insert(0, f"experiments/s25/pk_{v}")
import torch
import flashtron_base, flashtron_vstore, flashtron_vnoout, flashtron_vnoexp, flashtron_vnodq
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
LIBS = {"base": flashtron_base, "store": flashtron_vstore, "noout": flashtron_vnoout, "noexp": flashtron_vnoexp,
        "nodq": flashtron_vnodq}


def kernel_time(fn, name="hopper_backward_kernel", reps=10):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.key.startswith(name):
            return e.device_time_total / e.count
    return float("nan")


rows = []
for D, S, mask in [(64, 1024, "none"), (64, 2048, "none"), (64, 2048, "causal"), (64, 16384, "none"),
                   (64, 16384, "causal"), (128, 2048, "none"), (128, 16384, "causal")]:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    kw = dict(causal=mask != "none")
    t = {n: [] for n in LIBS}
    for r in range(3):
        for n, lib in LIBS.items():
            t[n].append(kernel_time(lambda: torch.autograd.grad(lib.flash_attn_func(q, k, v, **kw), (q, k, v), dout)))
    best = {n: min(x) for n, x in t.items()}
    steps = B * H * (S // 128) * (S // 64) / (2 if mask == "causal" else 1)  # (program, step) pairs
    rows.append(dict(D=D, S=S, mask=mask, kernel_us=best, all=t))
    print(f"D{D} S{S} {mask}: " + " ".join(f"{n} {best[n]:.0f}" for n in LIBS)
          + " | vs base: " + " ".join(f"{n} {best['base'] / best[n]:.3f}x" for n in LIBS if n != "base"), flush=True)
json.dump(rows, open(os.path.join(OUT, "s25c.json"), "w"), indent=1)
