"""Session 32 (d): is issue 3's window step (bench: do_bench, eager forward+backward) bound by the host?
Per step, same process, B 1, S 16k, H 16, D 128: (A) triton's do_bench as `flashtron bench` calls it; (B) the same
loop (L2 cleared, then start event, step, end event) with a 2 ms GPU sleep queued before each start, so the host
is ahead at every step; (C) host time of one step while the GPU is busy; (D) the kernels' device time per step
(profiler).  Window (1024, 0) and full causal.  Then a cProfile of 40 window steps (GPU kept busy)."""
import time, statistics, cProfile, pstats, io, sys
import torch, triton, triton.testing
import flashtron
from torch.profiler import profile, ProfilerActivity

B, S, H, D = 1, 16384, 16, 128
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)
cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")


def stepper(**kw):
    return lambda: flashtron.flash_attn_func(q, k, v, **kw).backward(grad)


def loop(fn, sleep_ms, n):
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    host = []
    for i in range(n):
        for t in (q, k, v):
            t.grad = None
        cache.zero_()
        if sleep_ms:
            torch.cuda._sleep(int(sleep_ms * 1.98e6))
        starts[i].record()
        h = time.perf_counter()
        fn()
        host.append(time.perf_counter() - h)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3, statistics.median(host) * 1e6


def kernels(fn):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    per = {}
    for e in prof.key_averages():
        if e.device_time_total > 0:
            per[e.key[:40]] = e.device_time_total / 5
    return per


print(torch.cuda.get_device_name(), flush=True)
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(300):
    x @ x
torch.cuda.synchronize()
for name, kw in (("window", dict(window_size=(1024, 0))), ("causal", dict(causal=True))):
    fn = stepper(**kw)
    fn(); torch.cuda.synchronize()
    for rnd in range(2):
        a = [triton.testing.do_bench(fn, grad_to_none=[q, k, v], return_mode="median") * 1e3 for _ in range(2)]
        b, hb = loop(fn, 2.0 if name == "window" else 8.0, 40)
        c, hc = loop(fn, 0, 40)
        print(f"{name} round {rnd}: do_bench {a[0]:.1f} {a[1]:.1f} us | loop, GPU ahead by a sleep {b:.1f} us "
              f"(host {hb:.0f} us/step) | loop, no sleep {c:.1f} us (host {hc:.0f} us/step)", flush=True)
    per = kernels(fn)
    total = sum(t for n, t in per.items() if not n.startswith("Memset") and "elementwise" not in n.lower() or True)
    print(f"{name} kernels per step: " + ", ".join(f"{n} {t:.1f}" for n, t in sorted(per.items(), key=lambda x: -x[1])))
    print(f"{name} kernel sum {sum(per.values()):.1f} us", flush=True)

fn = stepper(window_size=(1024, 0))
torch.cuda._sleep(int(200 * 1.98e6))
pr = cProfile.Profile()
pr.enable()
for _ in range(40):
    for t in (q, k, v):
        t.grad = None
    fn()
pr.disable()
torch.cuda.synchronize()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(45)
print(s.getvalue()[:9000])
