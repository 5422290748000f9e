"""Session 19: DEFER_DQ at D = 64 (the previous block's dQ part issued with S and dP, during the softmax; dS
triple-buffered) in the tree against base19 (ea6ca7c).  dK/dV equal bit for bit, dQ within float32 reordering;
then CUDA graphs of hopper_backward.backward, median of 5 interleaved rounds."""
import importlib.util, os, sys, statistics
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flashtron.kernels import hopper_forward as hf, hopper_backward as hb_new
from window_fit_lib import graph_ms
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
spec = importlib.util.spec_from_file_location("hb_base19", "experiments/base19/flashtron/kernels/hopper_backward.py")
hb_base = importlib.util.module_from_spec(spec); spec.loader.exec_module(hb_base)
mods = {"base": hb_base, "new": hb_new}
torch.manual_seed(0)

def setup(B, Sq, Sk, H, Hk, D, dt=torch.bfloat16, wl=-1, wr=0, varlen=None):
    q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt)
    k, v = (torch.randn(B, Sk, Hk, D, device="cuda", dtype=dt) for _ in range(2))
    do = torch.randn_like(q)
    o = torch.empty_like(q)
    l = torch.empty(B, H, Sq, device="cuda") if varlen is None else torch.empty(H, Sq, device="cuda")
    hf.forward(q, k, v, o, l, D ** -0.5, wl, wr, varlen)
    delta = (do.float() * o.float()).sum(-1)
    delta = delta.transpose(1, 2).contiguous() if varlen is None else delta[0].t().contiguous()
    return q, k, v, do, o, l, delta

def run(m, t, wl=-1, wr=0, varlen=None):
    q, k, v, do, o, l, delta = t
    dq = torch.full_like(q, float("nan")); dk = torch.full_like(k, float("nan")); dv = torch.full_like(v, float("nan"))
    m.backward(do, q, k, v, l, delta, dq, dk, dv, q.shape[-1] ** -0.5, wl, wr, varlen)
    return dq, dk, dv

n = 0
for D in (64, 128):
    for B, Sq, Sk, H, Hk in [(2, 1000, 1000, 3, 3), (1, 333, 777, 4, 2), (3, 777, 333, 4, 1), (1, 4099, 4099, 2, 1), (2, 65, 65, 2, 2), (1, 129, 1, 2, 2)]:
        for wl, wr in [(-1, -1), (-1, 0), (-1, 77), (100, 0)]:
            for dt in (torch.bfloat16, torch.float16):
                t = setup(B, Sq, Sk, H, Hk, D, dt, wl, wr)
                a, b = run(mods["base"], t, wl, wr), run(mods["new"], t, wl, wr)
                same = torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
                scale = a[0].float().abs().max().item()
                err = (a[0].float() - b[0].float()).abs().max().item()
                fin = all(bool(x.isfinite().all()) for x in b)
                ok = same and fin and err <= 1e-2 * max(scale, 1e-6)
                n += 1
                if not ok or n % 12 == 0:
                    print(f"check D={D} B={B} Sq={Sq} Sk={Sk} H={H}/{Hk} w=({wl},{wr}) {str(dt)[6:]}: dK/dV equal {same} finite {fin} dQ diff {err:.3g}/{scale:.3g}", flush=True)
                assert ok
    lens = torch.tensor([1, 200, 1000, 63, 129], device="cuda")
    cu = torch.zeros(6, dtype=torch.int32, device="cuda"); cu[1:] = lens.cumsum(0)
    T = int(lens.sum())
    for wl, wr in [(-1, -1), (-1, 0)]:
        t = setup(1, T, T, 4, 2, D, varlen=(cu, cu, 1000, 1000))
        a = run(mods["base"], t, wl, wr, (cu, cu, 1000, 1000)); b = run(mods["new"], t, wl, wr, (cu, cu, 1000, 1000))
        same = torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
        err = (a[0].float() - b[0].float()).abs().max().item(); scale = a[0].float().abs().max().item()
        print(f"check varlen D={D} w=({wl},{wr}): dK/dV equal {same}, dQ diff {err:.3g}/{scale:.3g}", flush=True)
        assert same and err <= 1e-2 * scale
print(f"{n} dense checks passed", flush=True)

rows = []
for D, causal in [(64, False), (64, True), (128, False), (128, True)]:
    for S in ((1024, 2048, 4096, 8192, 16384) if D == 64 else (2048, 16384)):
        B, H = 16384 // S, 2048 // D
        wr = 0 if causal else -1
        t = setup(B, S, S, H, H, D, wl=-1, wr=wr)
        fns = {name: (lambda m=m: run(m, t, -1, wr)) for name, m in mods.items()}
        times = {nme: [] for nme in fns}
        for rnd in range(5):
            for nme, f in fns.items():
                times[nme].append(graph_ms(f, calls=5, reps=5))
        med = {nme: statistics.median(v) for nme, v in times.items()}
        print(f"D={D} S={S} {'causal' if causal else 'full'}: base {med['base']*1e3:.0f}us new {med['new']*1e3:.0f}us -> {med['base']/med['new']:.3f}x", flush=True)
        rows.append((D, S, causal, med['base'] / med['new']))
print("\nbackward, DEFER_DQ tree over base19 (same process)")
for D, S, c, r in rows:
    print(f"D{D} S{S} {'causal' if c else 'full'}: {r:.3f}x")
