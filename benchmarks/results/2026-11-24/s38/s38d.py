"""Session 38 (d): the D = 64 causal forward at 4k-16k (0.95x-0.98x of cuDNN at 8k in three bench runs): the
consumer count and the tile order, against HEAD, interleaved do_bench rounds (median of 5), forward alone,
B*S = 16k, H = 32; outputs checked equal to HEAD's (same blocks per row, same order: bit for bit)."""
import statistics
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_forward as hf, launch_plans

HEAD = dict(consumer_count=hf.consumer_count, across_heads=hf.across_heads)
VARIANTS = {
    "HEAD": {},
    "two": dict(consumer_count=lambda *a: 2),
    "three": dict(consumer_count=lambda *a: 3),
    "in-heads": dict(across_heads=lambda *a: False),
    "three,in-heads": dict(consumer_count=lambda *a: 3, across_heads=lambda *a: False),
}


def setting(name):
    for attr, fn in HEAD.items():
        setattr(hf, attr, VARIANTS[name].get(attr, fn))
    launch_plans.clear()


print(torch.cuda.get_device_name(), flush=True)
rows = []
for S in (4096, 8192, 16384):
    B = 16384 // S
    q, k, v = (torch.randn(B, S, 32, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    setting("HEAD")
    ref = flashtron.flash_attn_func(q, k, v, causal=True)
    fns = {}
    for name in VARIANTS:
        setting(name)
        out = flashtron.flash_attn_func(q, k, v, causal=True)
        print(S, name, "max diff vs HEAD", (out.float() - ref.float()).abs().max().item(), flush=True)
        fns[name] = (name, lambda: flashtron.flash_attn_func(q, k, v, causal=True))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    t = {n: [] for n in list(VARIANTS) + ["cudnn"]}
    for _ in range(5):
        for n in t:
            if n == "cudnn":
                f = cudnn
            else:
                setting(n)
                f = fns[n][1]
            f()
            t[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3)
    m = {n: statistics.median(x) for n, x in t.items()}
    rows.append(f"| {S} | {m['cudnn']:.0f} | " + " | ".join(f"{m[n]:.0f} ({m['cudnn'] / m[n]:.3f}x)" for n in VARIANTS)
                + " |")
    print(rows[-1], flush=True)
setting("HEAD")
print("| S | cuDNN us | " + " | ".join(VARIANTS) + " (us, over cuDNN) |")
print("\n".join(rows))
