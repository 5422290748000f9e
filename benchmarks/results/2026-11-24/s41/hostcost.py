"""Host time of an eager forward+backward step (tiny shapes: host-bound), for the package on sys.path."""
import time, torch, flashtron
q, k, v = (torch.randn(1, 128, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
g = torch.randn_like(q)
for _ in range(50):
    flashtron.flash_attn_func(q, k, v, causal=True).backward(g)
torch.cuda.synchronize()
res = []
for _ in range(5):
    t = time.perf_counter()
    for _ in range(300):
        flashtron.flash_attn_func(q, k, v, causal=True).backward(g)
    torch.cuda.synchronize()
    res.append((time.perf_counter() - t) / 300 * 1e6)
print(flashtron.__file__, "us/step", [round(x, 1) for x in res], "min", round(min(res), 1))
