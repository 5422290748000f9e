"""Session 30 (b): DQ_FIRST (D = 64: a step issues its dQ part before dV and dK and sends it out while they run)
against the switch off, same process, burn-in, rotated order, 5 rounds, medians of the backward kernel's time.
`--sweep`: issue 3's window backward and forward kernel times against the window's left size (D = 128, 16k, B = 1,
H = 16), to split a tile's fixed cost from its per-step cost.  `--warm I`: only run case I's variants once."""
import os, sys, json
import torch
import flashtron
from flashtron.kernels import hopper_backward as hb
from torch.profiler import profile, ProfilerActivity
OUT = os.environ.get("OUT", ".")
VARIANTS = {"dqf": dict(DQ_FIRST=True)}
CASES = ([(64, S, m, False) for S in (1024, 2048, 4096, 8192, 16384) for m in ("none", "causal")]
         + [(64, 16384, "window", False), (64, 4096, "none", True), (64, 4096, "causal", True)])
NAME = "hopper_backward_kernel"


def kernel_time(fn, reps=6):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.key.startswith(NAME):
            return e.device_time_total / e.count
    return float("nan")


def knobs(fn, **kw):
    def run():
        old = {n: getattr(hb, n) for n in kw}
        for n, x in kw.items():
            setattr(hb, n, x)
        try:
            return fn()
        finally:
            for n, x in old.items():
                setattr(hb, n, x)
    return run


def case_fns(D, S, mask, varlen):
    B, H = max(16384 // S, 1), 2048 // D
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (1024, 0)
    if varlen:
        lengths = torch.randint(S // 4, S + 1, (B * 2,)).tolist()
        lengths[0] = S
        cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
        q, k, v = (torch.randn(sum(lengths), H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        call = lambda lib: lib.flash_attn_varlen_func(q, k, v, cu, cu, S, S, **kw)
    else:
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        call = lambda lib: lib.flash_attn_func(q, k, v, **kw)
    dout = torch.randn_like(q)

    def step(lib):
        return lambda: torch.autograd.grad(call(lib), (q, k, v), dout)
    fns = {"base": knobs(step(flashtron), DQ_FIRST=False)}
    fns.update({n: knobs(step(flashtron), **kw) for n, kw in VARIANTS.items()})
    return fns


if len(sys.argv) > 2 and sys.argv[1] == "--warm":
    for f in case_fns(*CASES[int(sys.argv[2])]).values():
        f()
    torch.cuda.synchronize()
    sys.exit(0)

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
    sys.exit(0)

print(torch.cuda.get_device_name(), flush=True)
torch.manual_seed(3002)
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(400):
    x @ x
torch.cuda.synchronize()
rows = []
for D, S, mask, varlen in CASES:
    fns = case_fns(D, S, mask, varlen)
    res = {n: f() for n, f in fns.items()}
    diff = {n: [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(res[n], res["base"])]
            for n in fns if n != "base"}
    kt = {n: [] for n in fns}
    names = list(fns)
    for rnd in range(5):
        for n in names[rnd % len(names):] + names[:rnd % len(names)]:
            kt[n].append(kernel_time(fns[n]))
    kb = {n: sorted(x)[len(x) // 2] for n, x in kt.items()}
    rows.append(dict(D=D, S=S, mask=mask, varlen=varlen, kernel_us=kb, all_kernel=kt, diff=diff))
    line = " | ".join(f"{n} {kb['base'] / kb[n]:.3f}x" for n in fns if n != "base")
    print(f"D{D} S{S} {mask}{' varlen' if varlen else ''}: base {kb['base']:.1f} us | {line} | rel diff vs base "
          + " ".join(f"{n} {'/'.join(f'{d:.1e}' for d in v)}" for n, v in diff.items()), flush=True)
json.dump(rows, open(os.path.join(OUT, "s30b.json"), "w"), indent=1)
