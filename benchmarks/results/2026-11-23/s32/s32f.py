"""Session 32 (f): how issue 3's two steps settle under sustained load.  Each step (do_bench's loop: grads to None,
L2 cleared, start event, step, end event) runs back to back for 3 s; printed: the median step time in windows of
the run's elapsed time, and NVML's SM clock (a lagging sample).  Order: window, causal, window, causal, then 3 s idle
and window, causal."""
import time, statistics
import torch
import flashtron

try:
    import pynvml
    pynvml.nvmlInit()
    HANDLE = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception:  # noqa
    HANDLE = None

B, S, H, D = 1, 16384, 16, 128
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)
cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
steps = {"window": lambda: flashtron.flash_attn_func(q, k, v, window_size=(1024, 0)).backward(grad),
         "causal": lambda: flashtron.flash_attn_func(q, k, v, causal=True).backward(grad)}
EDGES = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0]


def run(name, seconds=3.0):
    fn = steps[name]
    pairs, clocks = [], []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        batch = []
        for _ in range(32 if name == "window" else 6):
            for t in (q, k, v):
                t.grad = None
            cache.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record()
            batch.append((a, b))
        torch.cuda.synchronize()  # keeps the host's clock tied to the GPU's progress
        now = time.perf_counter() - t0
        pairs += [(now, x.elapsed_time(y) * 1e3) for x, y in batch]
        if HANDLE:
            clocks.append((now, pynvml.nvmlDeviceGetClockInfo(HANDLE, pynvml.NVML_CLOCK_SM)))
    parts = []
    for lo, hi in zip(EDGES, EDGES[1:]):
        ts = [t for s, t in pairs if lo <= s < hi]
        cs = [c for s, c in clocks if lo <= s < hi]
        if ts:
            parts.append(f"{lo:.2f}-{hi:.2f}s {statistics.median(ts):7.1f} us"
                         + (f" @{statistics.median(cs):.0f}MHz" if cs else ""))
    print(f"{name}: " + " | ".join(parts), flush=True)


print(torch.cuda.get_device_name(), flush=True)
for f in steps.values():
    f()
torch.cuda.synchronize()
for name in ("window", "causal", "window", "causal"):
    run(name)
time.sleep(3)
run("window")
run("causal")
