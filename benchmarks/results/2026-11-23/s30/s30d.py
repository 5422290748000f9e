"""Session 30 (d): the window masks in block key offsets in variable-length builds only (the working tree;
variable-length window at D = 128: 284 bytes of spill stores against 432) against HEAD (flashtron_base, experiments/base30), same process, burn-in,
rotated order, 5 rounds, medians of the backward kernel's time.  Cases (D, S, window, variable-length).
`--warm I`: only run case I's variants once."""
import os, sys, json
sys.path.insert(0, "experiments/base30")
import torch
import flashtron, flashtron_base
from flashtron.kernels import hopper_backward as hb
from torch.profiler import profile, ProfilerActivity
OUT = os.environ.get("OUT", ".")
VARIANTS = {"new": {}}
CASES = [(128, 4096, (1024, 0), True), (128, 16384, (256, 0), True), (128, 8192, (512, 512), True),
         (64, 4096, (1024, 0), True), (128, 16384, (1024, 0), False), (128, 4096, (-1, 0), True)]
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
    kw = dict(window_size=mask)
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
    fns = {"base": step(flashtron_base)}
    fns.update({n: knobs(step(flashtron), **kw) for n, kw in VARIANTS.items()})
    return fns


if len(sys.argv) > 2 and sys.argv[1] == "--warm":
    for f in case_fns(*CASES[int(sys.argv[2])]).values():
        f()
    torch.cuda.synchronize()
    sys.exit(0)

print(torch.cuda.get_device_name(), flush=True)
torch.manual_seed(3004)
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
json.dump(rows, open(os.path.join(OUT, "s30d.json"), "w"), indent=1)
