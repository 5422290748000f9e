"""Session 24 (a): dQ converted in the backward kernel by each query block's last part, its float32 sums kept zero
between calls (no zeroing in the delta pass, no dQ pass), against HEAD (flashtron_base): the eager fwd+bwd step,
same process, 3 interleaved rounds (best of the medians); gradients compared (dK, dV bit for bit)."""
import os, sys, json
for d in ("experiments/base24", "experiments/s24/pk_v1", "experiments/s24/pk_v5"):
    sys.path.insert(0, d)
import torch, triton.testing
import flashtron_base, flashtron_v1, flashtron_v5
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2401)
CASES = [(128, 16384, "window"), (128, 16384, "causal"), (128, 16384, "none"), (128, 1024, "causal"),
         (128, 1024, "none"), (128, 2048, "causal"), (64, 1024, "causal"), (64, 1024, "none"), (64, 2048, "none"),
         (64, 4096, "causal"), (64, 16384, "none")]
rows = []
for D, S, mask in CASES:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (1024, 0)
    def step(lib):
        return lambda: torch.autograd.grad(lib.flash_attn_func(q, k, v, **kw), (q, k, v), dout)
    fns = {"base": step(flashtron_base), "v1": step(flashtron_v1), "v5": step(flashtron_v5)}
    res = {n: f() for n, f in fns.items()}
    res["v1b"] = fns["v1"]()
    same_kv = {n: all(torch.equal(res[n][i], res["base"][i]) for i in (1, 2)) for n in ("v1", "v5", "v1b")}
    scale = res["base"][0].float().abs().max().item()
    dq_diff = {n: (res[n][0].float() - res["base"][0].float()).abs().max().item() / scale for n in ("v1", "v5", "v1b")}
    finite = all(bool(torch.isfinite(res[n][0]).all()) for n in ("v1", "v5", "v1b"))
    ms = {n: [] for n in fns}
    for r in range(3):
        for n, f in fns.items():
            ms[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median"))
    best = {n: min(x) for n, x in ms.items()}
    kernels = {}
    if S == 16384 and D == 128 and mask != 'none' or S == 1024 and mask == 'none':
        for n, f in fns.items():
            f(); torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    f()
                torch.cuda.synchronize()
            kernels[n] = {e.key[:40]: round(e.device_time_total / e.count, 1) for e in prof.key_averages()
                          if e.device_time_total > 0}
    row = dict(D=D, S=S, mask=mask, ms=best, all_ms=ms, same_kv=same_kv, dq_diff=dq_diff, finite=finite,
               kernels=kernels)
    rows.append(row)
    print(f"D{D} S{S} {mask}: base {best['base'] * 1e3:.1f} us v1 {best['v1'] * 1e3:.1f} v5 {best['v5'] * 1e3:.1f} "
          f"speed v1 {best['base'] / best['v1']:.3f}x v5 {best['base'] / best['v5']:.3f}x  dK/dV same {same_kv} "
          f"dQ rel diff {dq_diff} finite {finite}", flush=True)
    for n, ks in kernels.items():
        print("   ", n, ks, flush=True)
json.dump(rows, open(os.path.join(OUT, "s24a.json"), "w"), indent=1)
