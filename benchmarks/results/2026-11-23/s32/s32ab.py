"""Session 32's A/B harness, shared by s32a, s32b, s32h and s32j: forward and backward kernel times (torch profiler)
of one forward+backward per variant, in one process, rounds in rotated order, medians.  A variant is the working
tree's flashtron with module switches of hopper_backward or hopper_forward (functions too) set during its calls; the
base is another package (a commit's copy in experiments/, as flashtron_base) or the working tree as it is.  A case is
(D, S, window[, kv heads[, varlen]]); varlen: 2 * 16k / S sequences of S / 4 to S tokens.  `script --warm I` runs
case I once (compiles), `script --count` prints the number of cases.  (Written after the runs from the four scripts
that ran, which differed only in their cases, variants, base, seed and rounds.)"""
import os, sys, json
import torch
import flashtron
from flashtron.kernels import hopper_backward as hb, hopper_forward as hf
from torch.profiler import profile, ProfilerActivity

OUT = os.environ.get("OUT", ".")
NAMES = ("hopper_forward_kernel", "hopper_backward_kernel")


def times(fn, reps=6):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        for n in NAMES:
            if e.key.startswith(n):
                out[n] = e.device_time_total / e.count
    return out


def knobs(fn, kw):
    def run():
        old = {n: getattr(hb if hasattr(hb, n) else hf, n) for n in kw}
        for n, x in kw.items():
            setattr(hb if hasattr(hb, n) else hf, n, x)
        try:
            return fn()
        finally:
            for n, x in old.items():
                setattr(hb if hasattr(hb, n) else hf, n, x)
    return run


def fns(case, variants, base_lib):
    D, S, window = case[:3]
    H = 2048 // D
    Hk = case[3] if len(case) > 3 else H
    B = max(16384 // S, 1)
    if len(case) > 4 and case[4]:
        lengths = torch.randint(S // 4, S + 1, (B * 2,)).tolist()
        lengths[0] = S
        cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
        q = torch.randn(sum(lengths), H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(sum(lengths), Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                for _ in range(2))
        call = lambda lib: lib.flash_attn_varlen_func(q, k, v, cu, cu, S, S, window_size=window)
    else:
        q = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(B, S, Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        call = lambda lib: lib.flash_attn_func(q, k, v, window_size=window)
    dout = torch.randn_like(q)
    step = lambda lib: (lambda: torch.autograd.grad(call(lib), (q, k, v), dout))
    out = {"base": step(base_lib)}
    out.update({n: knobs(step(flashtron), kw) for n, kw in variants.items()})
    return out


def main(cases, variants, json_name, seed, base_lib=flashtron, rounds=5):
    if len(sys.argv) > 1 and sys.argv[1] == "--count":
        print(len(cases)); return
    if len(sys.argv) > 2 and sys.argv[1] == "--warm":
        for f in fns(cases[int(sys.argv[2])], variants, base_lib).values():
            f()
        torch.cuda.synchronize(); return
    print(torch.cuda.get_device_name(), flush=True)
    torch.manual_seed(seed)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(400):
        x @ x
    torch.cuda.synchronize()
    rows = []
    for case in cases:
        f = fns(case, variants, base_lib)
        res = {n: g() for n, g in f.items()}
        diff = {n: [float((a.float() - b.float()).abs().max() / b.float().abs().max())
                    for a, b in zip(res[n], res["base"])] for n in f if n != "base"}
        kt = {n: {k: [] for k in NAMES} for n in f}
        names = list(f)
        for rnd in range(rounds):
            for n in names[rnd % len(names):] + names[:rnd % len(names)]:
                t = times(f[n])
                for k in NAMES:
                    kt[n][k].append(t.get(k, float("nan")))
        med = {n: {k: sorted(v)[rounds // 2] for k, v in d.items()} for n, d in kt.items()}
        rows.append(dict(case=case, med=med, all=kt, diff=diff))
        b = med["base"]
        line = " | ".join(f"{n} fwd {b[NAMES[0]] / med[n][NAMES[0]]:.3f}x bwd {b[NAMES[1]] / med[n][NAMES[1]]:.3f}x"
                          for n in names[1:])
        print(f"{case}: base fwd {b[NAMES[0]]:.1f} bwd {b[NAMES[1]]:.1f} us | {line} | maxdiff "
              + " ".join(f"{n} {max(v):.1e}" for n, v in diff.items()), flush=True)
    json.dump(rows, open(os.path.join(OUT, json_name), "w"), indent=1)
