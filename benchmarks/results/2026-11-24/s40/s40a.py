"""Session 40 (a): dQ handed to the producer (DQ_HANDOVER) against HEAD.  Gradients first against float64 (dense
none/causal, GQA, variable lengths with short sequences), then forward+backward steps as `flashtron bench` times
them (B*S = 16k, H = 32, bf16), interleaved do_bench rounds (median) with SDPA-cuDNN."""
import statistics, sys
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_backward as hb, launch_plans

VARIANTS = ("HEAD", "HO")


def setting(name, d=None):
    for dd in (64, 128):
        hb.DQ_HANDOVER[dd] = name == "HO" and dd == 64
    launch_plans.clear()


def reference(q, k, v, causal, dout, cu_q=None, cu_k=None):
    if cu_q is not None:
        outs = [reference(q[:, a:b], k[:, c:e], v[:, c:e], causal, dout[:, a:b])
                for a, b, c, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist())]
        return [torch.cat([o[i] for o in outs], 1) for i in range(3)]
    qf, kf, vf = (t.detach().double().requires_grad_() for t in (q, k, v))
    g = q.shape[2] // k.shape[2]
    kr, vr = (t.repeat_interleave(g, 2) for t in (kf, vf))
    s = torch.einsum("bshd,bthd->bhst", qf, kr) * q.shape[-1] ** -0.5
    if causal:
        sq, sk = s.shape[-2:]
        s = s.masked_fill(torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril(sk - sq).logical_not(),
                          float("-inf"))
    o = torch.einsum("bhst,bthd->bshd", s.softmax(-1).nan_to_num(), vr)
    return torch.autograd.grad(o, (qf, kf, vf), dout.double())


print(torch.cuda.get_device_name(), flush=True)
bad = 0
for d in (64, ):
    for name, (sq, sk, h, hk, causal, varlen) in {
            "1037x1100": (1037, 1100, 4, 4, False, False), "4133x4200": (4133, 4200, 4, 4, False, False),
            "4133x4200c": (4133, 4200, 4, 4, True, False), "gqa3100c": (3100, 3100, 6, 2, True, False),
            "varlen": (0, 0, 4, 2, False, True), "varlen-c": (0, 0, 4, 2, True, True)}.items():
        if varlen:
            lens = torch.tensor([5, 700, 63, 2600, 129, 1], device="cuda")
            cu = torch.cat([torch.zeros(1, device="cuda", dtype=torch.int32), lens.cumsum(0).int()])
            total = int(cu[-1])
            q = torch.randn(1, total, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            kk, vv = (torch.randn(1, total, hk, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        else:
            q = torch.randn(2, sq, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            kk, vv = (torch.randn(2, sk, hk, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        dout = torch.randn_like(q)
        ref = reference(q, kk, vv, causal, dout, *((cu, cu) if varlen else ()))
        errs = {}
        for n in VARIANTS:
            setting(n)
            if varlen:
                o = flashtron.flash_attn_varlen_func(q[0], kk[0], vv[0], cu, cu, int(lens.max()), int(lens.max()),
                                                     causal=causal)[None]
            else:
                o = flashtron.flash_attn_func(q, kk, vv, causal=causal)
            g = torch.autograd.grad(o, (q, kk, vv), dout)
            errs[n] = [(a.double() - r).abs().max().item() for a, r in zip(g, ref)]
        ok = all(e <= 2 * max(hh, 1e-3) for e, hh in zip(errs["HO"], errs["HEAD"]))
        bad += not ok
        print(f"D {d} {name}: " + "; ".join(f"{n} {[f'{e:.2e}' for e in x]}" for n, x in errs.items())
              + ("" if ok else "  <-- TOO LARGE"), flush=True)
assert not bad, "error too large"

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
CELLS = [(64, S, False) for S in (1024, 2048, 4096, 8192, 16384)] + [(64, S, True) for S in (4096, 8192, 16384)]
rows = []
from torch.nn.attention import SDPBackend, sdpa_kernel
for D, S, causal in CELLS:
    H, B = 32, 16384 // S
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
    rows.append(f"| {D} | {S} | {'yes' if causal else 'no'} | {m['cudnn']:.0f} | "
                + " | ".join(f"{m[n]:.0f} ({m['cudnn'] / m[n]:.3f}x)" for n in VARIANTS)
                + f" | {m['HEAD'] / m['HO']:.3f}x |")
    print(rows[-1], flush=True)
setting("HEAD")
print("| D | S | causal | cuDNN us | " + " | ".join(f"{n} us (over cuDNN)" for n in VARIANTS) + " | HO/HEAD |")
print("\n".join(rows))
