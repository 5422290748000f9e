"""Session 25 (b): the D = 64 backward with each step's dV/dK/dQ under the next step's softmax (_overlapped_steps)
against HEAD (flashtron_base), same process: forward+backward by do_bench (3 interleaved rounds, best median), the
backward kernel's own time from the profiler, and the gradients compared (dK, dV bit for bit; dQ max difference)."""
import os, sys, json
sys.path.insert(0, "experiments/base25")
import torch, triton.testing
import flashtron, flashtron_base
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2502)


def kernel_time(fn, name="hopper_backward_kernel", reps=5):
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
CASES = [(64, S, m, False) for S in (1024, 2048, 4096, 8192, 16384) for m in ("none", "causal")]
CASES += [(64, 2048, "none", True), (64, 2048, "causal", True), (128, 2048, "none", False), (64, 4096, "window", False)]
for D, S, mask, varlen in CASES:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (512, 0)
    if varlen:
        lengths = torch.randint(S // 4, S + 1, (B * 2,)).tolist()
        lengths[0] = S
        total = sum(lengths)
        cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
        qv, kv_, vv = (torch.randn(total, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        dov = torch.randn_like(qv)

        def step(lib):
            return lambda: torch.autograd.grad(lib.flash_attn_varlen_func(qv, kv_, vv, cu, cu, S, S, **kw), (qv, kv_, vv), dov)
    else:
        def step(lib):
            return lambda: torch.autograd.grad(lib.flash_attn_func(q, k, v, **kw), (q, k, v), dout)
    fns = {"new": step(flashtron), "base": step(flashtron_base)}
    g = {n: f() for n, f in fns.items()}
    same_kv = bool(torch.equal(g["new"][1], g["base"][1]) and torch.equal(g["new"][2], g["base"][2]))
    dq_diff = (g["new"][0].float() - g["base"][0].float()).abs().max().item()
    dq_scale = g["base"][0].float().abs().max().item()
    ms = {n: [] for n in fns}
    kt = {n: [] for n in fns}
    for r in range(3):
        for n, f in fns.items():
            ms[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median"))
            kt[n].append(kernel_time(f))
    best = {n: min(x) for n, x in ms.items()}
    kbest = {n: min(x) for n, x in kt.items()}
    rows.append(dict(D=D, S=S, mask=mask, varlen=varlen, ms=best, all_ms=ms, kernel_us=kbest, all_kernel=kt,
                     same_dkdv=same_kv, dq_diff=dq_diff, dq_scale=dq_scale))
    print(f"D{D} S{S} {mask}{' varlen' if varlen else ''}: step base {best['base'] * 1e3:.0f} new {best['new'] * 1e3:.0f} us "
          f"({best['base'] / best['new']:.3f}x) | bwd kernel base {kbest['base']:.0f} new {kbest['new']:.0f} us "
          f"({kbest['base'] / kbest['new']:.3f}x) | dK,dV same {same_kv} dQ diff {dq_diff:.2g} (max {dq_scale:.2g})",
          flush=True)
json.dump(rows, open(os.path.join(OUT, "s25b.json"), "w"), indent=1)
