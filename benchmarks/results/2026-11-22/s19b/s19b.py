"""Session 19: the causal backward's tile order.  HEAD_GROUP = G interleaves G heads' key blocks (longest first
within the group); None = all heads (the shipped order).  dK/dV must be equal bit for bit across orders (each key
block's sums run in the same order), dQ within float32 reordering.  Then CUDA graphs of hopper_backward.backward
(zero + kernel + dQ pass), median of 5 interleaved rounds.  D = 64 short causal also against backward.py."""
import os, sys, statistics
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flashtron.kernels import hopper_forward as hf, hopper_backward as hb, launch
from window_fit_lib import graph_ms
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
torch.manual_seed(0)

def setup(B, Sq, Sk, H, Hk, D, dt=torch.bfloat16, wl=-1, wr=0):
    q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt)
    k, v = (torch.randn(B, Sk, Hk, D, device="cuda", dtype=dt) for _ in range(2))
    do = torch.randn_like(q)
    o = torch.empty_like(q); l = torch.empty(B, H, Sq, device="cuda")
    hf.forward(q, k, v, o, l, D ** -0.5, wl, wr)
    delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()
    return q, k, v, do, o, l, delta

def run_bwd(t, G, wl=-1, wr=0):
    q, k, v, do, o, l, delta = t
    hb.HEAD_GROUP = G
    dq = torch.full_like(q, float("nan")); dk = torch.full_like(k, float("nan")); dv = torch.full_like(v, float("nan"))
    hb.backward(do, q, k, v, l, delta, dq, dk, dv, q.shape[-1] ** -0.5, wl, wr)
    return dq, dk, dv

for D in (64, 128):
    for B, Sq, Sk, H, Hk in [(2, 1000, 1000, 3, 3), (1, 333, 777, 4, 2), (3, 777, 333, 4, 1), (5, 1500, 1500, 6, 2),
                             (1, 4099, 4099, 2, 1)]:
        for dt in (torch.bfloat16, torch.float16):
            t = setup(B, Sq, Sk, H, Hk, D, dt)
            ref = run_bwd(t, None)
            for G in (1, 2, 3, 5):
                got = run_bwd(t, G)
                same_kv = torch.equal(ref[1], got[1]) and torch.equal(ref[2], got[2])
                dq_err = (ref[0].float() - got[0].float()).abs().max().item()
                dq_scale = ref[0].float().abs().max().item()
                ok = same_kv and dq_err <= 1e-2 * dq_scale and all(bool(x.isfinite().all()) for x in got)
                print(f"check D={D} B={B} Sq={Sq} Sk={Sk} H={H}/{Hk} {str(dt)[6:]} G={G}: dK/dV equal {same_kv}, "
                      f"dQ max diff {dq_err:.3g} (max {dq_scale:.3g})", flush=True)
                assert ok

results = []
for D in (128, 64):
    for S in (1024, 2048, 4096, 8192, 16384):
        B, H = 16384 // S, 2048 // D
        t = setup(B, S, S, H, H, D)
        bh = B * H
        nnb = S // 128
        Gs = sorted({None, 1, 2, 4, 8, 16, max(1, round(132 / nnb))} - {g for g in (2, 4, 8, 16) if g and g >= bh},
                    key=lambda g: 10**9 if g is None else g)
        fns = {f"G={g}": (lambda g=g: run_bwd(t, g)) for g in Gs}
        if D == 64 and S <= 4096:
            q, k, v, do, o, l, delta = t
            saved = dict(hb.MIN_SEQLEN)
            def portable():
                hb.MIN_SEQLEN[64, True] = (10**9, 10**9)
                try:
                    launch.backward(do, q, k, v, o, l, D ** -0.5, -1, 0, 0.0, None, None, 0.0, None, False)
                finally:
                    hb.MIN_SEQLEN.update(saved)
            fns["backward.py"] = portable
            def launched(g):
                hb.MIN_SEQLEN[64, True] = (0, 0); hb.HEAD_GROUP = g
                try:
                    launch.backward(do, q, k, v, o, l, D ** -0.5, -1, 0, 0.0, None, None, 0.0, None, False)
                finally:
                    hb.MIN_SEQLEN.update(saved)
            gg = max(1, round(132 / nnb))
            fns["launch G=None"] = lambda: launched(None)
            fns[f"launch G={gg}"] = lambda: launched(gg)
        times = {n: [] for n in fns}
        for rnd in range(5):
            for n, f in fns.items():
                times[n].append(graph_ms(f, calls=5, reps=5))
        med = {n: statistics.median(v) for n, v in times.items()}
        base = med["G=None"]
        line = ", ".join(f"{n} {med[n]*1e3:.0f}us ({base/med[n]:.3f}x)" for n in fns)
        print(f"D={D} S={S} B={B} H={H}: {line}", flush=True)
        results.append((D, S, med))
hb.HEAD_GROUP = None
print("\nspeed over the shipped order (G=None = all heads), causal backward")
for D, S, med in results:
    base = med["G=None"]
    print(f"D{D:<4} S{S:<6} " + "  ".join(f"{n}:{base/m:.3f}" for n, m in med.items()))
