"""Session 32 (j): MASK_FIRST for D = 128 windows (the working tree) against HEAD 1be14a1 (flashtron_base,
experiments/base32b), same process, 7 rounds; forward and backward kernel times (torch profiler)
in rotated order, medians.  A case is (D, S, window[, kv heads[, varlen]]); varlen: 2 * 16k / S sequences of
S / 4 to S tokens.
`--warm I` runs case I once (compiles), `--count` prints the number of cases."""
import os, sys, json
sys.path.insert(0, "experiments/base32b")
import torch
import flashtron, flashtron_base
from flashtron.kernels import hopper_backward as hb, hopper_forward as hf
from torch.profiler import profile, ProfilerActivity

OUT = os.environ.get("OUT", ".")
NAMES = ("hopper_forward_kernel", "hopper_backward_kernel")
CASES = [(128, 16384, (1024, 0)), (128, 16384, (256, 0)), (128, 16384, (4096, 0)), (128, 8192, (512, 512)),
         (128, 16384, (1024, 0), 8), (128, 16384, (100, -1)), (128, 4096, (1024, 0), 16, True), (128, 16384, (1024, 0)),
         (128, 2048, (1024, 0))]
VARIANTS = {"new": {}}


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


def fns(case):
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
    out = {"base": step(flashtron_base)}
    out.update({n: knobs(step(flashtron), kw) for n, kw in VARIANTS.items()})
    return out


if len(sys.argv) > 1 and sys.argv[1] == "--count":
    print(len(CASES)); sys.exit()
if len(sys.argv) > 2 and sys.argv[1] == "--warm":
    for f in fns(CASES[int(sys.argv[2])]).values():
        f()
    torch.cuda.synchronize(); sys.exit()
print(torch.cuda.get_device_name(), flush=True)
torch.manual_seed(3210)
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(400):
    x @ x
torch.cuda.synchronize()
rows = []
for case in CASES:
    f = fns(case)
    res = {n: g() for n, g in f.items()}
    diff = {n: [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(res[n], res["base"])]
            for n in f if n != "base"}
    kt = {n: {k: [] for k in NAMES} for n in f}
    names = list(f)
    for rnd in range(7):
        for n in names[rnd % len(names):] + names[:rnd % len(names)]:
            t = times(f[n])
            for k in NAMES:
                kt[n][k].append(t.get(k, float("nan")))
    med = {n: {k: sorted(v)[3] for k, v in d.items()} for n, d in kt.items()}
    rows.append(dict(case=case, med=med, all=kt, diff=diff))
    b = med["base"]
    line = " | ".join(f"{n} fwd {b[NAMES[0]] / med[n][NAMES[0]]:.3f}x bwd {b[NAMES[1]] / med[n][NAMES[1]]:.3f}x"
                      for n in names[1:])
    print(f"{case}: base fwd {b[NAMES[0]]:.1f} bwd {b[NAMES[1]]:.1f} us | {line} | maxdiff "
          + " ".join(f"{n} {max(v):.1e}" for n, v in diff.items()), flush=True)
json.dump(rows, open(os.path.join(OUT, "s32j.json"), "w"), indent=1)
