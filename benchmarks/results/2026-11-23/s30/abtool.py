"""Session 30's A/B harness, shared by s30a-s30d: the backward kernel's time (torch profiler) for a base and
variants in one process, after a burn-in, 5 rounds in rotated order, medians.  A variant is the working tree's
flashtron with hopper_backward's module switches set during its calls; the base is another package (HEAD's, copied
to experiments/ as flashtron_base) or the working tree with its own switches.  `script --warm I` runs case I's
functions once (the compiles, in parallel processes), `script --count` prints the number of cases.
(Written after the runs, from the four scripts that ran; the A/B's code is theirs.)"""
import os, sys, json
import torch
import flashtron
from flashtron.kernels import hopper_backward as hb
from torch.profiler import profile, ProfilerActivity

OUT = os.environ.get("OUT", ".")


def kernel_time(fn, name="hopper_backward_kernel", reps=6):
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
    """fn with hopper_backward's module switches set to kw during each call."""
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


def case_fns(D, S, mask, varlen, base_lib, base_knobs, variants):
    """One forward+backward per variant: mask "none", "causal", "window" (causal, (1024, 0)) or a window_size
    tuple; B = 16k / S sequences (variable-length: twice as many, S / 4 to S tokens), 2048 / D heads."""
    B, H = max(16384 // S, 1), 2048 // D
    if isinstance(mask, tuple):
        kw = dict(window_size=mask)
    else:
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
    fns = {"base": knobs(step(base_lib), **base_knobs)}
    fns.update({n: knobs(step(flashtron), **kw) for n, kw in variants.items()})
    return fns


def main(cases, variants, json_name, seed, base_lib=flashtron, base_knobs=None):
    """Run the A/B over cases ((D, S, mask, varlen)), print a line per case, write OUT/json_name; or handle
    --warm I / --count."""
    make = lambda case: case_fns(*case, base_lib, base_knobs or {}, variants)
    if len(sys.argv) > 1 and sys.argv[1] == "--count":
        print(len(cases))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--warm":
        for f in make(cases[int(sys.argv[2])]).values():
            f()
        torch.cuda.synchronize()
        return
    print(torch.cuda.get_device_name(), flush=True)
    torch.manual_seed(seed)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(400):
        x @ x
    torch.cuda.synchronize()
    rows = []
    for D, S, mask, varlen in cases:
        fns = make((D, S, mask, varlen))
        res = {n: f() for n, f in fns.items()}
        diff = {n: [float((a.float() - b.float()).abs().max() / b.float().abs().max())
                    for a, b in zip(res[n], res["base"])] for n in fns if n != "base"}
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
    json.dump(rows, open(os.path.join(OUT, json_name), "w"), indent=1)
