"""Session 28 (a): causal forward loops against HEAD (flashtron_base), same process, burn-in, rotated order,
5 rounds, medians.  Variants of the working tree's hopper_forward: split = SPLIT_CAUSAL (per consumer a masked loop
over the blocks at or past its diagonal, then a plain loop); three = CAUSAL_THREE_FROM 2048 (D = 64 2k/4k with
three consumers); three+split."""
import os, sys, json, math
sys.path.insert(0, "experiments/base28")
import torch
import flashtron, flashtron_base
from flashtron.kernels import hopper_forward as hf
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2801)


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


def reference(q, k, v, rows):
    qd, kd, vd = (t[0].double().transpose(0, 1) for t in (q, k, v))
    s = qd[:, :rows] @ kd.transpose(1, 2) / math.sqrt(q.shape[-1])
    i = torch.arange(rows, device=q.device)[:, None]
    j = torch.arange(k.shape[1], device=q.device)[None, :]
    s = s.masked_fill(j > i + k.shape[1] - q.shape[1], float("-inf"))
    return (s.softmax(-1) @ vd).transpose(0, 1)


x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(400):
    x @ x
torch.cuda.synchronize()
rows = []
CASES = [(64, S, S) for S in (1024, 2048, 4096, 8192, 16384)] + [(128, S, S) for S in (1024, 4096, 16384)] + [
    (64, 3000, 4500), (128, 3000, 4500)]
with torch.no_grad():
    for D, Sq, Sk in CASES:
        B, H = max(16384 // Sk, 1), 2048 // D
        q = torch.randn(B, Sq, H, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, Sk, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))

        def step(lib):
            return lambda: lib.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
        fns = {"base": step(flashtron_base), "split": knobs(step(flashtron), SPLIT_CAUSAL=True)}
        if D == 64 and Sk in (2048, 4096):
            fns["three"] = knobs(step(flashtron), CAUSAL_THREE_FROM=2048)
            fns["three+split"] = knobs(step(flashtron), CAUSAL_THREE_FROM=2048, SPLIT_CAUSAL=True)
        res = {n: f() for n, f in fns.items()}
        diff = {n: (float((res[n][0].float() - res["base"][0].float()).abs().max()),
                    float((res[n][1] - res["base"][1]).abs().max())) for n in fns if n != "base"}
        r = reference(q, k, v, min(Sq, 512))
        ref_err = {n: float((res[n][0][0, :min(Sq, 512)].double() - r).abs().max()) for n in fns}
        kt = {n: [] for n in fns}
        names = list(fns)
        for rnd in range(5):
            for n in names[rnd % len(names):] + names[:rnd % len(names)]:
                kt[n].append(kernel_time(fns[n]))
        kb = {n: sorted(x)[len(x) // 2] for n, x in kt.items()}
        rows.append(dict(D=D, Sq=Sq, Sk=Sk, kernel_us=kb, all_kernel=kt, diff=diff, ref_err=ref_err))
        line = " | ".join(f"{n} {kb['base'] / kb[n]:.3f}x" for n in fns if n != "base")
        print(f"D{D} {Sq}x{Sk} causal: base {kb['base']:.1f} us | {line} | diff "
              f"{dict((n, round(d[0], 4)) for n, d in diff.items())} ref {dict((n, round(e, 4)) for n, e in ref_err.items())}",
              flush=True)
json.dump(rows, open(os.path.join(OUT, "s28a.json"), "w"), indent=1)
