"""Session 33 (a): dQ converted in the persistent backward's tail (DQ_TAIL) against the postprocess pass, same process.
Per case: gradients of both variants compared; then rounds in rotated order of (1) the profiler's kernel times of one
forward+backward (each kernel, and their sum) and (2) the step's event time, back to back for `SECONDS` (median of
its second half).  Last, issue 3's sustained ratio (s32i's method) for both variants.
A case is (D, S, window, kv heads); B = 16k / S, H = 2048 / D.  `--warm I` compiles case I, `--count`."""
import os, sys, json, time, statistics
import torch
import flashtron
from flashtron.kernels import hopper_backward as hb
from torch.profiler import profile, ProfilerActivity

OUT = os.environ.get("OUT", ".")
CASES = [(128, 16384, (1024, 0), 16), (128, 16384, (256, 0), 16)]
VARIANTS = {"pass": dict(DQ_IN_TAIL=False, DQ_CLAIM=102), "t16k": dict(DQ_IN_TAIL=True, DQ_CLAIM=2),
            "nocount": dict(DQ_IN_TAIL=True, DQ_CLAIM=1002), "noconv": dict(DQ_IN_TAIL=True, DQ_CLAIM=2002)}
SECONDS = float(os.environ.get("SECONDS", "0.3"))
cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")


def step_fn(case, knobs):
    D, S, window, Hk = case
    H, B = 2048 // D, max(16384 // S, 1)
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    k, v = (torch.randn(B, S, Hk, D, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
            for _ in range(2))
    dout = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16, generator=g)

    def run():
        old = {n: getattr(hb, n) for n in knobs}
        for n, x in knobs.items():
            setattr(hb, n, x)
        try:
            return torch.autograd.grad(flashtron.flash_attn_func(q, k, v, window_size=window), (q, k, v), dout)
        finally:
            for n, x in old.items():
                setattr(hb, n, x)
    return run


def kernels(fn, reps=5):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.device_time_total > 0 and e.count >= reps:
            name = e.key.split("(")[0][:40]
            out[name] = e.device_time_total / reps
    out["sum"] = sum(out.values())
    return out


def sustained(fn, seconds):
    pairs, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = []
        for _ in range(16):
            cache.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record()
            batch.append((a, b))
        torch.cuda.synchronize()
        now = time.perf_counter() - t0
        pairs += [(now, x.elapsed_time(y) * 1e3) for x, y in batch]
    return statistics.median(t for s, t in pairs if s >= seconds / 2)


def main():
    if sys.argv[1:2] == ["--count"]:
        print(len(CASES)); return
    if sys.argv[1:2] == ["--warm"]:
        for tail in VARIANTS.values():
            step_fn(CASES[int(sys.argv[2])], tail)()
        torch.cuda.synchronize(); return
    print(torch.cuda.get_device_name(), flush=True)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(300):
        x @ x
    torch.cuda.synchronize()
    rows = []
    for case in CASES:
        fns = {n: step_fn(case, t) for n, t in VARIANTS.items()}
        grads = {n: f() for n, f in fns.items()}
        diff = [float((a.float() - b.float()).abs().max() / b.float().abs().max())
                for a, b in zip(grads["t16k"], grads["pass"])]
        ker = {n: [] for n in fns}
        wall = {n: [] for n in fns}
        names = list(fns)
        for rnd in range(4):
            for n in names[rnd % 4:] + names[:rnd % 4]:
                ker[n].append(kernels(fns[n]))
                wall[n].append(sustained(fns[n], SECONDS))
        med = {n: statistics.median(w) for n, w in wall.items()}
        ksum = {n: statistics.median(k["sum"] for k in ker[n]) for n in names}
        # The backward (with the dQ pass where there is one) over the same round's forward, an unchanged kernel: the
        # clock moves both.
        bf = {n: statistics.median((k["hopper_backward_kernel"] + k.get("attention_backward_postprocess", 0))
                                   / k["hopper_forward_kernel"] for k in ker[n]) for n in names}
        rows.append(dict(case=case, diff=diff, wall=wall, kernels=ker))
        print(f"{case}: step " + " ".join(f"{n} {med[n]:.1f} ({med['pass'] / med[n]:.3f}x)" for n in names)
              + " | kernel sum " + " ".join(f"{n} {ksum[n]:.1f} ({ksum['pass'] / ksum[n]:.3f}x)" for n in names)
              + " | bwd/fwd " + " ".join(f"{n} {bf[n]:.3f} ({bf['pass'] / bf[n]:.3f}x)" for n in names)
              + f" | grad diff t16k dq {diff[0]:.1e} dk {diff[1]:.1e} dv {diff[2]:.1e}", flush=True)
        for n in names:
            print("    ", n, {k: round(v, 1) for k, v in ker[n][-1].items()}, flush=True)
    json.dump(rows, open(os.path.join(OUT, "s33a.json"), "w"), indent=1)


main()
