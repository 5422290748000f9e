"""Session 38 (e): at D = 64 (DQ_BY_KEYS), dQ = dS K with dS from registers (an RS wgmma: 8 KB less shared-memory
reading per consumer and step) against HEAD's dS from shared memory.
Forward+backward steps as `flashtron bench` times them (B*S = 16k, H*D = 2048, bf16), interleaved do_bench
rounds (median of 3) with SDPA-cuDNN in the same rounds. First a correctness check of the persistent build on
odd shapes against a float64 reference (and HEAD's error on the same inputs)."""
import statistics, sys
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_backward as hb, launch_plans

def setting(registers):
    hb.DQ_FROM_REGISTERS = registers
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
for D in (64,):
    for causal in (False, True):
        q = torch.randn(2, 1037, 4, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        kk, vv = (torch.randn(2, 1100, 4, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                  for _ in range(2))
        dout = torch.randn_like(q)
        ref = reference(q, kk, vv, causal, dout)
        errs = {}
        for p in (False, True):
            setting(p)
            g = torch.autograd.grad(flashtron.flash_attn_func(q, kk, vv, causal=causal), (q, kk, vv), dout)
            errs[p] = [(a.double() - r).abs().max().item() for a, r in zip(g, ref)]
        print(f"D {D} causal {causal} max err dq dk dv: HEAD {errs[False]} registers {errs[True]}", flush=True)
        assert all(e <= 2 * max(h, 1e-3) for e, h in zip(errs[True], errs[False])), "error too large"

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
rows = []
for D in (64,):
    H = 2048 // D
    for S in (1024, 2048, 4096, 8192, 16384):
        B = 16384 // S
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        grad = torch.randn_like(q)
        gradt = grad.transpose(1, 2).contiguous()
        for causal in (False, True):
            from torch.nn.attention import SDPBackend, sdpa_kernel
            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(gradt)
            def ours():
                flashtron.flash_attn_func(q, k, v, causal=causal).backward(grad)
            t = {n: [] for n in ("smem", "registers", "cudnn")}
            for _ in range(ROUNDS):
                for n in t:
                    if n == "cudnn":
                        f = cudnn
                        inputs = [qt, kt, vt]
                    else:
                        setting(n == "registers")
                        f = ours
                        inputs = [q, k, v]
                    f()
                    t[n].append(triton.testing.do_bench(f, warmup=25, rep=100, grad_to_none=inputs,
                                                        return_mode="median") * 1e3)
            m = {n: statistics.median(x) for n, x in t.items()}
            rows.append(f"| {D} | {S} | {'yes' if causal else 'no'} | {m['cudnn']:.0f} | {m['smem']:.0f} "
                        f"({m['cudnn'] / m['smem']:.3f}x) | {m['registers']:.0f} ({m['cudnn'] / m['registers']:.3f}x)"
                        f" | {m['smem'] / m['registers']:.3f}x |")
            print(rows[-1], flush=True)
setting(True)
print("| D | S | causal | cuDNN us | dS from shared memory us (over cuDNN) | from registers us (over cuDNN) | registers over shared |")
print("\n".join(rows))
