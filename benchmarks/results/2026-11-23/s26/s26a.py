"""Session 26 (a): the backward's consumers skip every matmul of a block none of whose (row, key) pairs they see
(SKIP_INVISIBLE), against HEAD (flashtron_base), same process.  Variants: base (HEAD), skip (causal and windows),
noskip-causal (windows only; causal compiled without the test).  Per case: the backward kernel's own time from the
profiler (best of 3 interleaved rounds), the eager forward+backward step by do_bench, and the gradients against
base (dK, dV bit for bit; dQ max difference)."""
import os, sys, json
sys.path.insert(0, "experiments/base26")
import torch, triton.testing
import flashtron, flashtron_base
from flashtron.kernels import hopper_backward as hb
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2601)


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


def with_skip(fn, skip):
    def run():
        old = hb.SKIP_CAUSAL
        hb.SKIP_CAUSAL = skip
        try:
            return fn()
        finally:
            hb.SKIP_CAUSAL = old
    return run


rows = []
CASES = []
for D in (128, 64):
    CASES += [(D, S, "causal", False) for S in (1024, 2048, 4096, 16384)]
    CASES += [(D, 16384, "window", False), (D, 2048, "causal", True), (D, 1024, "none", False)]
for D, S, mask, varlen in CASES:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (1024, 0)
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
    fns = {"base": step(flashtron_base), "skip": with_skip(step(flashtron), True)}
    if mask == "causal" and not varlen:
        fns["noskip"] = with_skip(step(flashtron), False)
    g = {n: f() for n, f in fns.items()}
    check = {}
    for n in fns:
        if n == "base":
            continue
        same_kv = bool(torch.equal(g[n][1], g["base"][1]) and torch.equal(g[n][2], g["base"][2]))
        dq_diff = (g[n][0].float() - g["base"][0].float()).abs().max().item()
        check[n] = dict(same_dkdv=same_kv, dq_diff=dq_diff)
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
                     check=check, dq_scale=dq_scale))
    line = f"D{D} S{S} {mask}{' varlen' if varlen else ''}: bwd kernel base {kbest['base']:.0f} us"
    for n in fns:
        if n != "base":
            line += (f" | {n} {kbest[n]:.0f} ({kbest['base'] / kbest[n]:.3f}x, step {best['base'] / best[n]:.3f}x,"
                     f" dKdV same {check[n]['same_dkdv']}, dQ diff {check[n]['dq_diff']:.2g})")
    print(line, flush=True)
json.dump(rows, open(os.path.join(OUT, "s26a.json"), "w"), indent=1)
