"""Session 34 (b): the host's part of the 1k causal D = 128 step on an H100 host (issue 6's 0.69x cell).
(1) host time per step, GPU kept busy, autograd multithreaded (as users run it) and not; (2) cProfile of the
single-threaded step (the backward on the main thread), top functions by own time and by cumulative time."""
import cProfile, pstats, io, statistics, time, sys
import torch
import flashtron

D, S, causal = 128, 1024, True
B, H = 16384 // S, 2048 // D
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)


def step():
    for t in (q, k, v):
        t.grad = None
    flashtron.flash_attn_func(q, k, v, causal=causal).backward(grad)


def host(n=60):
    torch.cuda.synchronize()
    torch.cuda._sleep(int(0.3 * 1.98e9))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e6


for _ in range(3):
    step()
print(torch.cuda.get_device_name(), flush=True)
for rnd in range(2):
    mt = host()
    with torch.autograd.set_multithreading_enabled(False):
        st = host()
    print(f"host per step: multithreaded {mt:.0f} us, single-threaded {st:.0f} us", flush=True)

prof = cProfile.Profile()
with torch.autograd.set_multithreading_enabled(False):
    torch.cuda._sleep(int(0.3 * 1.98e9))
    prof.enable()
    for _ in range(100):
        step()
    prof.disable()
    torch.cuda.synchronize()
for key in ("tottime", "cumulative"):
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats(key).print_stats(45)
    print(s.getvalue())
