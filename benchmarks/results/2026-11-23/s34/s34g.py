"""Session 34 (g): issue 3's steps on an H100, kernel by kernel (torch.profiler, device µs per step): window
(1024, 0) and full causal, B 1, S 16k, H 16, D 128, bf16; the fixed passes' share and their bytes per µs."""
import collections
import torch
from torch.profiler import profile, ProfilerActivity
import flashtron

B, S, H, D = 1, 16384, 16, 128
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)


def per_kernel(fn, n):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            for t in (q, k, v):
                t.grad = None
            fn()
        torch.cuda.synchronize()
    t = collections.defaultdict(float)
    for e in p.key_averages():
        if e.device_time_total > 0:
            t[e.key[:50]] += e.device_time_total / n
    return dict(sorted(t.items(), key=lambda kv: -kv[1]))


print(torch.cuda.get_device_name())
steps = {"window": lambda: flashtron.flash_attn_func(q, k, v, window_size=(1024, 0)).backward(grad),
         "causal": lambda: flashtron.flash_attn_func(q, k, v, causal=True).backward(grad)}
total = {}
for name, n in (("window", 20), ("causal", 4), ("window", 20)):
    times = per_kernel(steps[name], n)
    total[name] = sum(times.values())
    print(f"{name}: {total[name]:.1f} us of kernels per step: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()
                                                                       if v > 1), flush=True)
print(f"kernel-time ratio causal / window: {total['causal'] / total['window']:.2f}x")
