"""Session 39 (b): Q in registers (S's A operand; Q's slot freed once loaded) for the D = 128 bf16 forward without a
mask, across lengths, forward and forward+backward as `flashtron bench` times them (B*S = 16k, H*D = 2048), interleaved
do_bench rounds (median) with SDPA-cuDNN; then fp16 and a variable-length batch.  Correctness first (float64)."""
import statistics, sys
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_forward as hf, launch_plans


def setting(qregs, dtype_fp8=False):
    hf.Q_IN_REGISTERS.clear()
    hf.Q_IN_REGISTERS[(128, dtype_fp8)] = qregs
    launch_plans.clear()


print(torch.cuda.get_device_name(), flush=True)
for dtype in (torch.bfloat16, torch.float16):
    for Sq, Sk in ((1037, 1100), (3000, 2001)):
        q = torch.randn(2, Sq, 4, 128, device="cuda", dtype=dtype)
        k, v = (torch.randn(2, Sk, 4, 128, device="cuda", dtype=dtype) for _ in range(2))
        s = torch.einsum("bshd,bthd->bhst", q.double(), k.double()) * 128 ** -0.5
        ref = torch.einsum("bhst,bthd->bshd", s.softmax(-1), v.double())
        errs = []
        for qr in (False, True):
            setting(qr)
            errs.append((flashtron.flash_attn_func(q, k, v).double() - ref).abs().max().item())
        print(dtype, Sq, Sk, "max err base / qregs", errs, "OK" if errs[1] <= 2 * errs[0] + 1e-5 else "FAIL", flush=True)

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
rows = []
from torch.nn.attention import SDPBackend, sdpa_kernel
for S in (1024, 2048, 4096, 8192, 16384):
    H, B, D = 16, 16384 // S, 128
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(q); gradt = grad.transpose(1, 2).contiguous()
    for mode in ("fwd", "fwd+bwd"):
        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                o = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
                if mode != "fwd":
                    o.backward(gradt)
        def ours():
            o = flashtron.flash_attn_func(q, k, v)
            if mode != "fwd":
                o.backward(grad)
        t = {n: [] for n in ("base", "qregs", "cudnn")}
        for _ in range(ROUNDS):
            for n in t:
                if n == "cudnn":
                    f, inputs = cudnn, [qt, kt, vt]
                else:
                    setting(n == "qregs"); f, inputs = ours, [q, k, v]
                f()
                t[n].append(triton.testing.do_bench(f, warmup=25, rep=150, grad_to_none=inputs,
                                                    return_mode="median") * 1e3)
        m = {n: statistics.median(x) for n, x in t.items()}
        rows.append(f"| {S} | {mode} | {m['cudnn']:.0f} | {m['base']:.0f} ({m['cudnn'] / m['base']:.3f}x) | "
                    f"{m['qregs']:.0f} ({m['cudnn'] / m['qregs']:.3f}x) | {m['base'] / m['qregs']:.3f}x |")
        print(rows[-1], flush=True)
# a variable-length batch without a mask: 64 sequences of 128-1024 tokens, H = 16
lens = torch.randint(128, 1025, (64,), generator=torch.Generator().manual_seed(0))
cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32).cuda()
total = int(lens.sum())
q, k, v = (torch.randn(total, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
t = {n: [] for n in ("base", "qregs")}
for _ in range(ROUNDS):
    for n in t:
        setting(n == "qregs")
        f = lambda: flashtron.flash_attn_varlen_func(q, k, v, cu, cu, int(lens.max()), int(lens.max()))
        f()
        t[n].append(triton.testing.do_bench(f, warmup=25, rep=150, return_mode="median") * 1e3)
m = {n: statistics.median(x) for n, x in t.items()}
rows.append(f"| varlen 64 x 128-1024 | fwd | - | {m['base']:.0f} | {m['qregs']:.0f} | {m['base'] / m['qregs']:.3f}x |")
print("| S | mode | cuDNN us | base us (over cuDNN) | qregs us (over cuDNN) | qregs over base |")
print("\n".join(rows))
