"""Session 19: the forward's causal tile order in groups of heads (experiments/s19fwd: ACROSS_HEADS replaced by a
runtime head_group; G = all heads is the shipped across-heads order, G = 1 one head after another).  Outputs
must equal the shipped kernel's bit for bit; then CUDA graphs, median of 5 interleaved rounds."""
import importlib.util, os, sys, statistics
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flashtron.kernels import hopper_forward as shipped
from window_fit_lib import graph_ms
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
spec = importlib.util.spec_from_file_location("hf19", "experiments/s19fwd/hopper_forward.py")
new = importlib.util.module_from_spec(spec); spec.loader.exec_module(new)
torch.manual_seed(0)
for D in (64, 128):
    for B, Sq, Sk, H, Hk, wl, wr in [(2, 1000, 1000, 3, 3, -1, -1), (2, 1000, 1000, 3, 3, -1, 0), (1, 333, 777, 4, 2, -1, 0),
                                     (3, 777, 333, 4, 1, -1, 0), (2, 1000, 1000, 2, 2, 100, 0), (2, 1000, 1000, 2, 2, 50, 20),
                                     (1, 8200, 8200, 3, 1, -1, 0)]:
        q = torch.randn(B, Sq, H, D, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, Sk, Hk, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        outs = {}
        for name, m, g in (("shipped", shipped, None), ("G1", new, 1), ("G2", new, 2), ("Gall", new, 10**6)):
            if m is new:
                new.HEAD_GROUP = lambda bh, nmb, programs, g=g: min(g, bh)
            o = torch.full_like(q, float("nan")); l = torch.full((B, H, Sq), float("nan"), device="cuda")
            m.forward(q, k, v, o, l, D ** -0.5, wl, wr)
            outs[name] = (o, l)
        ok = all(torch.equal(outs["shipped"][0], outs[n][0]) and torch.equal(outs["shipped"][1], outs[n][1]) for n in outs)
        print(f"check D={D} B={B} Sq={Sq} Sk={Sk} H={H}/{Hk} w=({wl},{wr}): equal {ok}", flush=True)
        assert ok and bool(outs["shipped"][0].isfinite().all())

rows = []
for D in (128, 64):
    for S in (2048, 4096, 8192, 16384):
        B, H = 16384 // S, 2048 // D
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        o = torch.empty_like(q); l = torch.empty(B, H, S, device="cuda")
        fns = {"shipped": lambda: shipped.forward(q, k, v, o, l, D ** -0.5, -1, 0)}
        for g in (1, 2, 4, 8, "rule"):
            def f(g=g):
                new.HEAD_GROUP = ((lambda bh, nmb, programs: max(1, min(bh, round(programs / nmb)))) if g == "rule"
                                  else (lambda bh, nmb, programs, g=g: min(g, bh)))
                new.forward(q, k, v, o, l, D ** -0.5, -1, 0)
            fns[f"G={g}"] = f
        times = {n: [] for n in fns}
        for rnd in range(5):
            for n, fn in fns.items():
                times[n].append(graph_ms(fn, calls=5, reps=5))
        med = {n: statistics.median(t) for n, t in times.items()}
        print(f"D={D} S={S}: " + ", ".join(f"{n} {med[n]*1e3:.0f}us" for n in fns), flush=True)
        rows.append((D, S, med))
print("\ncausal forward, speed over shipped (across heads from 4 * blocks per head > programs)")
for D, S, med in rows:
    print(f"D{D:<4} S{S:<6} " + "  ".join(f"{n}:{med['shipped']/m:.3f}" for n, m in med.items()))
