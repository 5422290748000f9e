"""s37e: what the packed forms' backward costs today: flash_attn_qkvpacked_func / kvpacked against flash_attn_func
on separate tensors, fwd+bwd, bf16, B=4, S=4096, H=16, D=128, causal; interleaved rounds."""
import torch
import flashtron
from triton.testing import do_bench

B, S, H, D = 4, 4096, 16, 128
qkv = torch.randn(B, S, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
kv = torch.randn(B, S, 2, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
do = torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16)


def separate():
    flashtron.flash_attn_func(q, k, v, causal=True).backward(do)


def qkvpacked():
    flashtron.flash_attn_qkvpacked_func(qkv, causal=True).backward(do)


def qkv_unbind():
    flashtron.flash_attn_func(*qkv.unbind(2), causal=True).backward(do)


def kvpacked():
    flashtron.flash_attn_kvpacked_func(q, kv, causal=True).backward(do)


cases = {"separate": separate, "qkvpacked": qkvpacked, "qkv_unbind": qkv_unbind, "kvpacked": kvpacked}
times = {n: [] for n in cases}
for _ in range(3):
    for n, f in cases.items():
        times[n].append(do_bench(f, warmup=50, rep=300, grad_to_none=[q, k, v, qkv, kv]))
print(torch.cuda.get_device_name())
for n, ts in times.items():
    m = sorted(ts)[1]
    print(f"{n:12s} {' '.join(f'{t:.3f}' for t in ts)} ms  ({m / sorted(times['separate'])[1]:.3f}x separate)")
