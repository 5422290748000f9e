"""Session 22 (h): D = 64 backward with each block's dQ part sent in the next step, under its S and dP (DEFER_DQ),
the consumers, so they need not run in lockstep; twice the reduce-add bytes) against the column split, in one
process (hopper_backward.DQ_BY_KEYS[64] toggled).  1. both against a float64 oracle; 2. backward alone, do_bench,
best of 3 interleaved rounds; eager steps against SDPA-cuDNN."""
import os, json
import torch, triton.testing
from torch.nn.attention import sdpa_kernel, SDPBackend
import flashtron
from flashtron.kernels import hopper_backward as hb
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
OUT = os.environ.get("OUT", ".")
T, HID = 16384, 2048
torch.manual_seed(2208)


def variant(by_keys):
    def run(f):
        hb.DEFER_DQ = by_keys
        try:
            return f()
        finally:
            hb.DEFER_DQ = True
    return run


VARIANTS = {"defer": variant(True), "now": variant(False)}


def oracle(q, k, v, g, causal, window):
    q64, k64, v64 = (t.detach().double().transpose(1, 2).requires_grad_() for t in (q, k, v))
    S, D = q.shape[1], q.shape[3]
    s = q64 @ k64.transpose(-1, -2) * D ** -0.5
    i = torch.arange(S, device=q.device)[:, None]
    j = torch.arange(S, device=q.device)[None, :]
    mask = torch.ones(S, S, dtype=torch.bool, device=q.device)
    if causal or window is not None:
        mask &= j <= i
    if window is not None:
        mask &= j >= i - window[0]
    o = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v64
    o.backward(g.double().transpose(1, 2))
    return [t.grad.transpose(1, 2) for t in (q64, k64, v64)]


def check(S, causal, window=None, B=2, H=3, D=64):
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    ref = oracle(q, k, v, g, causal, window)
    errs = {}
    for name, run in VARIANTS.items():
        def step():
            for t in (q, k, v):
                t.grad = None
            flashtron.flash_attn_func(q, k, v, causal=causal, window_size=window or (-1, -1)).backward(g)
            return [q.grad.clone(), k.grad.clone(), v.grad.clone()]
        grads = run(step)
        errs[name] = [(a.double() - r).abs().max().item() for a, r in zip(grads, ref)]
    worst = max(n / max(b, 1e-6) for n, b in zip(errs["defer"], errs["now"]))
    print(f"  S{S} causal={causal} window={window}: err dq/dk/dv defer " + "/".join(f"{e:.2e}" for e in errs["defer"])
          + " now " + "/".join(f"{e:.2e}" for e in errs["now"]) + f" worst defer/now {worst:.2f}", flush=True)
    return worst < 1.5


def timing(S, causal, window=None, D=64):
    B, H = T // S, HID // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    ws = window or (-1, -1)
    out = flashtron.flash_attn_func(q, k, v, causal=causal, window_size=ws)
    fns = {}
    for name, run in VARIANTS.items():
        fns[name + "-bwd"] = lambda run=run: run(lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True))
        fns[name + "-step"] = lambda run=run: run(
            lambda: flashtron.flash_attn_func(q, k, v, causal=causal, window_size=ws).backward(g))
    if window is None:
        qc, kc, vc = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        gc = g.transpose(1, 2).contiguous()

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=causal).backward(gc)
        fns["cudnn-step"] = cudnn
    ms = {n: [] for n in fns}
    for rnd in range(3):
        for n, f in fns.items():
            ms[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median"))
    best = {n: min(v) for n, v in ms.items()}
    line = (f"D{D} S{S:>5} {'causal' if causal else 'full  '} {str(window or ''):>10}: bwd defer/now "
            f"{best['now-bwd'] / best['defer-bwd']:.3f}x ({best['defer-bwd'] * 1e3:.0f} vs {best['now-bwd'] * 1e3:.0f} us),"
            f" step {best['now-step'] / best['defer-step']:.3f}x")
    if "cudnn-step" in best:
        line += f"; step/cudnn defer {best['cudnn-step'] / best['defer-step']:.3f} now {best['cudnn-step'] / best['now-step']:.3f}"
    print(line, flush=True)
    return dict(S=S, causal=causal, window=window, **best), line


print("=== 1. against the float64 oracle")
ok = all([check(2100, False), check(1500, True), check(2049, False, (257, 0)), check(4096, True, B=1, H=2)])
print("  all ok:", ok, flush=True)
print("=== 2. timing")
rows, lines = [], []
for S, c, w in [(2048, False, None), (2048, True, None), (4096, False, None), (4096, True, None), (16384, False, None),
                (16384, True, None), (16384, True, (1024, 0))]:
    r, l = timing(S, c, w)
    rows.append(r); lines.append(l)
json.dump(rows, open(os.path.join(OUT, "s22h.json"), "w"), indent=1)
print("=== table")
print("\n".join(lines))
