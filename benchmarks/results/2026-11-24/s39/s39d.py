"""Session 39 (d): is the D = 64 backward bound by L2 throughput from its dQ reduce-adds?  ncu (s39c, H100, 4k without
a mask): our backward's L2 at 87% of its throughput against cuDNN's 60%, issue slots 31% against 45%.  Each step
reduce-adds two (64, 64) float32 parts (DQ_BY_KEYS: one per consumer, 32 KB) beside 16 KB of Q and dO copies.
Variants: HEAD; dQ split by columns over both consumers' keys (DQ_BY_KEYS[64] False: half the reduce bytes, the
consumers meet every step); each with the persistent build.  Forward+backward steps as `flashtron bench` times them
(B*S = 16k, H = 32, D = 64, bf16), interleaved do_bench rounds (median) with SDPA-cuDNN.  Gradients first (float64)."""
import statistics, sys
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_backward as hb, launch_plans

HEAD_PERSISTENT = hb._persistent
VARIANTS = {"HEAD": (True, False), "split": (False, False), "pers": (True, True), "split+pers": (False, True)}


def setting(name):
    by_keys, pers = VARIANTS[name]
    hb.DQ_BY_KEYS[64] = by_keys
    hb._persistent = (lambda *a: True) if pers else HEAD_PERSISTENT
    launch_plans.clear()


def reference(q, k, v, causal, dout):
    qf, kf, vf = (t.detach().double().requires_grad_() for t in (q, k, v))
    s = torch.einsum("bshd,bthd->bhst", qf, kf) * q.shape[-1] ** -0.5
    if causal:
        sq, sk = s.shape[-2:]
        s = s.masked_fill(torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril(sk - sq).logical_not(),
                          float("-inf"))
    o = torch.einsum("bhst,bthd->bshd", s.softmax(-1), vf)
    return torch.autograd.grad(o, (qf, kf, vf), dout.double())


print(torch.cuda.get_device_name(), flush=True)
for causal in (False, True):
    q = torch.randn(2, 1037, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kk, vv = (torch.randn(2, 1100, 4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    dout = torch.randn_like(q)
    ref = reference(q, kk, vv, causal, dout)
    errs = {}
    for n in VARIANTS:
        setting(n)
        g = torch.autograd.grad(flashtron.flash_attn_func(q, kk, vv, causal=causal), (q, kk, vv), dout)
        errs[n] = [(a.double() - r).abs().max().item() for a, r in zip(g, ref)]
    print(f"causal {causal} max err dq dk dv: " + "; ".join(f"{n} {[f'{e:.2e}' for e in x]}" for n, x in errs.items()),
          flush=True)
    assert all(e <= 2 * max(h, 1e-3) for n in VARIANTS for e, h in zip(errs[n], errs["HEAD"])), "error too large"

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
CELLS = [(S, False) for S in (1024, 2048, 4096, 8192, 16384)] + [(S, True) for S in (2048, 8192, 16384)]
rows = []
from torch.nn.attention import SDPBackend, sdpa_kernel
for S, causal in CELLS:
    D, H, B = 64, 32, 16384 // S
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(q); gradt = grad.transpose(1, 2).contiguous()
    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(gradt)
    def ours():
        flashtron.flash_attn_func(q, k, v, causal=causal).backward(grad)
    t = {n: [] for n in list(VARIANTS) + ["cudnn"]}
    for _ in range(ROUNDS):
        for n in t:
            if n == "cudnn":
                f, inputs = cudnn, [qt, kt, vt]
            else:
                setting(n); f, inputs = ours, [q, k, v]
            f()
            t[n].append(triton.testing.do_bench(f, warmup=25, rep=150, grad_to_none=inputs, return_mode="median") * 1e3)
    m = {n: statistics.median(x) for n, x in t.items()}
    rows.append(f"| {S} | {'yes' if causal else 'no'} | {m['cudnn']:.0f} | "
                + " | ".join(f"{m[n]:.0f} ({m['cudnn'] / m[n]:.3f}x)" for n in VARIANTS) + " |")
    print(rows[-1], flush=True)
setting("HEAD")
print("| S | causal | cuDNN us | " + " | ".join(f"{n} us (over cuDNN)" for n in VARIANTS) + " |")
print("\n".join(rows))
