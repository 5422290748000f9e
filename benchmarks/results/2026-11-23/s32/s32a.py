"""Session 32 (a): the backward's window tile order (TAIL_LAST: each head's short last key blocks taken after all
others) and the forward's FROM_LAST for windows (WINDOW_FROM_LAST), against HEAD (flashtron_base, experiments/base32),
same process; forward and backward kernel times (torch profiler), 5 rounds in rotated order, medians.
`--warm I` runs case I once (compiles), `--count` prints the number of cases."""
import os, sys, json
sys.path.insert(0, "experiments/base32")
import torch
import flashtron, flashtron_base
from flashtron.kernels import hopper_backward as hb, hopper_forward as hf
from torch.profiler import profile, ProfilerActivity

OUT = os.environ.get("OUT", ".")
NAMES = ("hopper_forward_kernel", "hopper_backward_kernel")
CASES = [(128, 16384, (1024, 0)), (128, 16384, (256, 0)), (128, 16384, (4096, 0)), (128, 8192, (512, 512)),
         (64, 16384, (1024, 0)), (128, 16384, (1024, 0), 8)]  # last: GQA, 8 kv heads of 16
VARIANTS = {"tail": dict(TAIL_LAST=True, WINDOW_FROM_LAST=False), "tail+fl": dict(TAIL_LAST=True, WINDOW_FROM_LAST=True),
            "fl": dict(TAIL_LAST=False, WINDOW_FROM_LAST=True)}


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
    q = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(B, S, Hk, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    dout = torch.randn_like(q)
    step = lambda lib: (lambda: torch.autograd.grad(lib.flash_attn_func(q, k, v, window_size=window), (q, k, v), dout))
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
torch.manual_seed(3201)
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
    for rnd in range(5):
        for n in names[rnd % len(names):] + names[:rnd % len(names)]:
            t = times(f[n])
            for k in NAMES:
                kt[n][k].append(t.get(k, float("nan")))
    med = {n: {k: sorted(v)[2] for k, v in d.items()} for n, d in kt.items()}
    rows.append(dict(case=case, med=med, all=kt, diff=diff))
    b = med["base"]
    line = " | ".join(f"{n} fwd {b[NAMES[0]] / med[n][NAMES[0]]:.3f}x bwd {b[NAMES[1]] / med[n][NAMES[1]]:.3f}x"
                      for n in names[1:])
    print(f"{case}: base fwd {b[NAMES[0]]:.1f} bwd {b[NAMES[1]]:.1f} us | {line} | maxdiff "
          + " ".join(f"{n} {max(v):.1e}" for n, v in diff.items()), flush=True)
json.dump(rows, open(os.path.join(OUT, "s32a.json"), "w"), indent=1)
