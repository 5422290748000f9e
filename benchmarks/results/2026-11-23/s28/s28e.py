"""Session 28 (e): MASK_FIRST at D = 64 (mf), and with two consumers for causal 8k-16k (two), against HEAD (flashtron_base), same process, burn-in, rotated order, 5 rounds,
medians of the forward kernel's time.  `--warm I`: only call case I's variants once (compiles, for a parallel warm-up)."""
import os, sys, json, math
sys.path.insert(0, "experiments/base28")
import torch
import flashtron, flashtron_base
from flashtron.kernels import hopper_forward as hf
from torch.profiler import profile, ProfilerActivity
OUT = os.environ.get("OUT", ".")
VARIANTS = {"mf": {}, "two": dict(CAUSAL_THREE_FROM=1 << 30)}
CASES = [(64, 8192, "causal", False, False, ("mf", "two")), (64, 16384, "causal", False, False, ("mf", "two")),
         (64, 4096, "causal", True, False, ("mf",)), (64, 16384, "window", False, False, ("mf",))]


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


def knobs(fn, **kw):
    def run():
        old = {n: getattr(hf, n) for n in kw}
        for n, x in kw.items():
            setattr(hf, n, x)
        try:
            return fn()
        finally:
            for n, x in old.items():
                setattr(hf, n, x)
    return run


def reference(q, k, v, causal, window, rows):
    qd, kd, vd = (t[0].double().transpose(0, 1) for t in (q, k, v))
    s = qd[:, :rows] @ kd.transpose(1, 2) / math.sqrt(q.shape[-1])
    i = torch.arange(rows, device=q.device)[:, None]
    j = torch.arange(k.shape[1], device=q.device)[None, :]
    shift = k.shape[1] - q.shape[1]
    if causal:
        s = s.masked_fill(j > i + shift, float("-inf"))
    if window:
        s = s.masked_fill(j < i + shift - window[0], float("-inf"))
    return (s.softmax(-1) @ vd).transpose(0, 1)


def case_fns(D, S, mask, varlen, fp8, names):
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
        cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
        qv, kv_, vv = (torch.randn(sum(lengths), H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))

        def step(lib):
            return lambda: lib.flash_attn_varlen_func(qv, kv_, vv, cu, cu, S, S, return_attn_probs=True, **kw)
    else:
        def step(lib):
            return lambda: lib.flash_attn_func(q, k, v, return_attn_probs=True, **kw)
    fns = {"base": step(flashtron_base)}
    fns.update({n: knobs(step(flashtron), **VARIANTS[n]) for n in names})
    check = None if varlen else (lambda out: float((out[0, :min(S, 512)].double()
                                                    - reference(q, k, v, mask != "none", window, min(S, 512))).abs().max()))
    return fns, check


if len(sys.argv) > 2 and sys.argv[1] == "--warm":
    fns, _ = case_fns(*CASES[int(sys.argv[2])])
    with torch.no_grad():
        for f in fns.values():
            f()
    torch.cuda.synchronize()
    sys.exit(0)

print(torch.cuda.get_device_name(), flush=True)
torch.manual_seed(2805)
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(400):
    x @ x
torch.cuda.synchronize()
rows = []
with torch.no_grad():
    for D, S, mask, varlen, fp8, names in CASES:
        fns, check = case_fns(D, S, mask, varlen, fp8, names)
        res = {n: f() for n, f in fns.items()}
        diff = {n: (float((res[n][0].float() - res["base"][0].float()).abs().max()),
                    float((res[n][1] - res["base"][1]).abs().max())) for n in fns if n != "base"}
        ref_err = {n: check(res[n][0]) for n in fns} if check else {}
        kt = {n: [] for n in fns}
        names = list(fns)
        for rnd in range(5):
            for n in names[rnd % len(names):] + names[:rnd % len(names)]:
                kt[n].append(kernel_time(fns[n]))
        kb = {n: sorted(x)[len(x) // 2] for n, x in kt.items()}
        rows.append(dict(D=D, S=S, mask=mask, varlen=varlen, fp8=fp8, kernel_us=kb, all_kernel=kt, diff=diff,
                         ref_err=ref_err))
        line = " | ".join(f"{n} {kb['base'] / kb[n]:.3f}x" for n in fns if n != "base")
        print(f"D{D} S{S} {mask}{' varlen' if varlen else ''}{' fp8' if fp8 else ''}: base {kb['base']:.1f} us | {line} | "
              f"diff {max(d[0] for d in diff.values()):.4f}/{max(d[1] for d in diff.values()):.2e} ref "
              f"{dict((n, round(e, 4)) for n, e in ref_err.items())}", flush=True)
json.dump(rows, open(os.path.join(OUT, "s28e.json"), "w"), indent=1)
