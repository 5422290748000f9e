"""Session 32 (i): issue 3's ratio in the sustained state.  Each step runs back to back for 2 s (do_bench's loop:
grads to None, L2 cleared, events around the step), and the median of its last 1.5 s is taken: the window
(1024, 0) of the working tree and of HEAD (flashtron_base, experiments/base32) alternating twice, then full causal
twice (the same kernels in both).  B 1, S 16k, H 16, D 128."""
import sys, time, statistics
sys.path.insert(0, "experiments/base32")
import torch
import flashtron, flashtron_base

B, S, H, D = 1, 16384, 16, 128
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)
cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
steps = {"window new": lambda: flashtron.flash_attn_func(q, k, v, window_size=(1024, 0)).backward(grad),
         "window HEAD": lambda: flashtron_base.flash_attn_func(q, k, v, window_size=(1024, 0)).backward(grad),
         "causal": lambda: flashtron.flash_attn_func(q, k, v, causal=True).backward(grad)}


def run(name, seconds=2.0):
    fn, pairs, t0 = steps[name], [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = []
        for _ in range(32 if name != "causal" else 6):
            for t in (q, k, v):
                t.grad = None
            cache.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record()
            batch.append((a, b))
        torch.cuda.synchronize()
        now = time.perf_counter() - t0
        pairs += [(now, x.elapsed_time(y) * 1e3) for x, y in batch]
    return statistics.median(t for s, t in pairs if s >= 0.5)


print(torch.cuda.get_device_name(), flush=True)
for f in steps.values():
    f()
torch.cuda.synchronize()
res = {n: [] for n in steps}
for name in ("window new", "window HEAD", "window new", "window HEAD", "causal", "causal"):
    res[name].append(run(name))
    print(f"{name}: {res[name][-1]:.1f} us (sustained)", flush=True)
c = statistics.mean(res["causal"])
for n in ("window new", "window HEAD"):
    w = statistics.mean(res[n])
    print(f"{n}: {w:.1f} us, causal {c:.1f} us, ratio {c / w:.3f}")
