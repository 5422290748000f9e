"""Session 22 (c): the backward with lse and delta staged in shared memory by the producer (cp.async)
as P^T exists when there is no left window edge) against HEAD's backward (experiments/base22 as flashtron_base), in
one process.  1. both against a float64 oracle (max error) and each other; 2. backward alone and forward+backward,
do_bench (as flashtron bench), interleaved rounds, best of 3; SDPA-cuDNN in the same rounds."""
import os, sys, json
import torch, triton.testing
from torch.nn.attention import sdpa_kernel, SDPBackend
sys.path.insert(0, "experiments/base22")
import flashtron, flashtron_base
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
OUT = os.environ.get("OUT", ".")
IMPLS = {"new": flashtron.flash_attn_func, "base": flashtron_base.flash_attn_func}
T, HID = 16384, 2048
torch.manual_seed(22)


def oracle(q, k, v, g, causal, window):
    q64, k64, v64 = (t.detach().double().transpose(1, 2).requires_grad_() for t in (q, k, v))
    S, D = q.shape[1], q.shape[3]
    s = q64 @ k64.transpose(-1, -2) * D ** -0.5
    i = torch.arange(S, device=q.device)[:, None]
    j = torch.arange(S, device=q.device)[None, :]
    mask = torch.ones(S, S, dtype=torch.bool, device=q.device)
    if causal:
        mask &= j <= i
    if window is not None:
        mask &= j >= i - window[0]
    s = s.masked_fill(~mask, float("-inf"))
    o = torch.softmax(s, -1) @ v64
    o.backward(g.double().transpose(1, 2))
    return [t.grad.transpose(1, 2) for t in (q64, k64, v64)]


def check(D, S, causal, window=None, B=2, H=3):
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    ref = oracle(q, k, v, g, causal, window)
    errs = {}
    grads = {}
    for name, f in IMPLS.items():
        for t in (q, k, v):
            t.grad = None
        out = f(q, k, v, causal=causal, window_size=window or (-1, -1))
        out.backward(g)
        grads[name] = [q.grad.clone(), k.grad.clone(), v.grad.clone()]
        errs[name] = [(a.double() - r).abs().max().item() for a, r in zip(grads[name], ref)]
    worst = max(n / max(b, 1e-6) for n, b in zip(errs["new"], errs["base"]))
    print(f"  D{D} S{S} causal={causal} window={window}: err dq/dk/dv new "
          + "/".join(f"{e:.2e}" for e in errs["new"]) + " base " + "/".join(f"{e:.2e}" for e in errs["base"])
          + f" worst new/base {worst:.2f}", flush=True)
    return worst < 1.5


def timing(D, S, causal, window=None):
    B, H = T // S, HID // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    ws = window or (-1, -1)
    fns = {}
    for name, f in IMPLS.items():
        fns[name + "-step"] = lambda f=f: f(q, k, v, causal=causal, window_size=ws).backward(g)
        out = f(q, k, v, causal=causal, window_size=ws)
        fns[name + "-bwd"] = lambda out=out: torch.autograd.grad(out, (q, k, v), g, retain_graph=True)
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
    row = dict(D=D, S=S, causal=causal, window=window, **best)
    line = (f"D{D} S{S:>5} {'causal' if causal else 'full  '} {str(window or ''):>10}: bwd new/base "
            f"{best['base-bwd'] / best['new-bwd']:.3f}x ({best['new-bwd'] * 1e3:.0f} vs {best['base-bwd'] * 1e3:.0f} us),"
            f" step {best['base-step'] / best['new-step']:.3f}x")
    if "cudnn-step" in best:
        line += f"; step/cudnn new {best['cudnn-step'] / best['new-step']:.3f} base {best['cudnn-step'] / best['base-step']:.3f}"
    print(line, flush=True)
    return row, line


def main():
    print("=== 1. against the float64 oracle")
    ok = all([check(64, 1500, True), check(64, 2049, False), check(128, 1029, True), check(128, 2048, False),
              check(128, 1800, True, (300, 0)), check(64, 2100, False, (257, 0))])
    print("  all ok:", ok, flush=True)
    print("=== 2. timing (best of 3 interleaved rounds)")
    rows, lines = [], []
    cases = [(64, s, c) for s in (1024, 4096, 16384) for c in (False, True)]
    cases += [(128, s, c) for s in (1024, 4096, 16384) for c in (False, True)]
    for D, S, c in cases:
        r, l = timing(D, S, c)
        rows.append(r); lines.append(l)
    r, l = timing(128, 16384, True, (1024, 0))
    rows.append(r); lines.append(l)
    json.dump(rows, open(os.path.join(OUT, "s22c.json"), "w"), indent=1)
    print("=== table")
    print("\n".join(lines))


main()
