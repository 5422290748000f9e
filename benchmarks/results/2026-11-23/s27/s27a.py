"""Session 27 (a): the forward visiting each tile's key blocks from the last (hopper_forward.ORDER) against HEAD
(flashtron_base), same process.  ORDER 1: the last block alone first, then one loop, compiled without the masked
softmax where no other block needs it; 2: the same order, the loop always with both bodies (control: order
alone); 3: as 1, and with a left window edge a plain loop then the first block alone, masked; 4: three runs (as
D = 256) at every head dim.  Per case: the forward kernel's time from the profiler (best of 3 interleaved rounds)
and the largest difference of out and lse from HEAD's, and of out from a float64 reference on the first rows."""
import os, sys, json, math
sys.path.insert(0, "experiments/base27")
import torch
import flashtron, flashtron_base
from flashtron.kernels import hopper_forward as hf
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2701)


def kernel_time(fn, name="hopper_forward_kernel", reps=10):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.key.startswith(name):
            return e.device_time_total / e.count
    return float("nan")


def order(fn, o):
    def run():
        old = hf.ORDER
        hf.ORDER = o
        try:
            return fn()
        finally:
            hf.ORDER = old
    return run


def reference(q, k, v, causal, window, rows):
    """float64 out for the first batch entry's first `rows` query rows (all heads)."""
    qd, kd, vd = (t[0].double().transpose(0, 1) for t in (q, k, v))  # (H, S, D)
    if qd.dtype != kd.dtype:
        kd = kd.to(qd.dtype)
    s = qd[:, :rows] @ kd.transpose(1, 2) / math.sqrt(q.shape[-1])
    i = torch.arange(rows, device=q.device)[:, None]
    j = torch.arange(k.shape[1], device=q.device)[None, :]
    shift = k.shape[1] - q.shape[1]
    if causal:
        s = s.masked_fill(j > i + shift, float("-inf"))
    if window:
        s = s.masked_fill(j < i + shift - window[0], float("-inf"))
    return (s.softmax(-1) @ vd).transpose(0, 1)


rows = []
CASES = ([(64, S, "causal", False) for S in (1024, 2048, 4096, 16384)] + [(64, S, "none", False) for S in (1024, 2048, 16384)]
         + [(64, 16384, "window", False), (64, 4096, "causal", True), (64, 4096, "none", True)]
         + [(128, S, "causal", False) for S in (1024, 2048, 4096, 16384)] + [(128, S, "none", False) for S in (1024, 16384)]
         + [(128, 16384, "window", False), (128, 4096, "causal", True), (128, 4096, "none", True)]
         + [(256, 1024, "causal", False), (256, 16384, "causal", False), (256, 16384, "none", False),
            (256, 16384, "window", False)]
         + [(128, 16384, "causal-fp8", False), (128, 16384, "none-fp8", False), (64, 3000, "causal", False),
            (128, 1000, "none", False)])
with torch.no_grad():
    for D, S, mask, varlen in CASES:
        fp8 = mask.endswith("-fp8")
        mask = mask.replace("-fp8", "")
        B, H = max(16384 // S, 1), 2048 // D
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        kw = dict(causal=mask != "none")
        window = None
        if mask == "window":
            window = (1024, 0)
            kw["window_size"] = window
        if fp8:
            q, k, v = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
            ones = torch.ones(B, H, device="cuda")
            kw.update(q_descale=ones, k_descale=ones, v_descale=ones)
        if varlen:
            lengths = torch.randint(S // 4, S + 1, (B * 2,)).tolist()
            lengths[0] = S
            total = sum(lengths)
            cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
            qv, kv_, vv = (torch.randn(total, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))

            def step(lib):
                return lambda: lib.flash_attn_varlen_func(qv, kv_, vv, cu, cu, S, S, return_attn_probs=True, **kw)
        else:
            def step(lib):
                return lambda: lib.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
        orders = [1, 2]
        if mask == "window":
            orders.append(3)
        if D in (64, 128) and not varlen and not fp8 and S in (1024, 16384) and mask != "none":
            orders.append(4)
        fns = {"base": step(flashtron_base)}
        fns.update({f"o{o}": order(step(flashtron), o) for o in orders})
        res = {n: f() for n, f in fns.items()}
        diff = {n: (float((res[n][0].float() - res["base"][0].float()).abs().max()),
                    float((res[n][1] - res["base"][1]).abs().max())) for n in fns if n != "base"}
        ref_err = {}
        if not varlen:
            r = reference(q, k, v, mask != "none", window, min(S, 512))
            for n in fns:
                ref_err[n] = float((res[n][0][0, :min(S, 512)].double() - r).abs().max())
        kt = {n: [] for n in fns}
        for _ in range(3):
            for n, f in fns.items():
                kt[n].append(kernel_time(f))
        kb = {n: min(x) for n, x in kt.items()}
        rows.append(dict(D=D, S=S, mask=mask, fp8=fp8, varlen=varlen, kernel_us=kb, all_kernel=kt, diff=diff,
                         ref_err=ref_err))
        line = " | ".join(f"{n} {kb['base'] / kb[n]:.3f}x" for n in fns if n != "base")
        print(f"D{D} S{S} {mask}{' fp8' if fp8 else ''}{' varlen' if varlen else ''}: base {kb['base']:.1f} us | {line}"
              f" | diff {dict((n, round(d[0], 4)) for n, d in diff.items())} ref {dict((n, round(e, 4)) for n, e in ref_err.items())}",
              flush=True)
json.dump(rows, open(os.path.join(OUT, "s27a.json"), "w"), indent=1)
