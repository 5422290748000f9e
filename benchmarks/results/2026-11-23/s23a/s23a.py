"""Where each bench cell's time goes: host time per eager step, device busy time (profiler), kernel list,
do_bench eager time; flashtron and cuDNN.  Usage: python s23a.py OUTDIR"""
import sys, time, json, statistics
import torch, triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashtron import flash_attn_func

out_dir = sys.argv[1]
dev = "cuda"
SHAPES = [(128, 1024, "causal"), (128, 1024, "none"), (64, 1024, "causal"), (64, 1024, "none"),
          (128, 2048, "causal"), (64, 2048, "none"), (128, 16384, "window"), (128, 16384, "causal")]

def make(d, s):
    b, h = 16384 // s, 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(b, s, h, d, device=dev, dtype=torch.bfloat16)
    return q, k, v, g

def step_fn(impl, mask, q, k, v, g):
    if impl == "flashtron":
        kw = dict(causal=mask != "none")
        if mask == "window":
            kw["window_size"] = (1024, 0)
        return lambda: flash_attn_func(q, k, v, **kw).backward(g)
    qt, kt, vt, gt = (t.transpose(1, 2) for t in (q, k, v, g))
    sd = torch.nn.functional.scaled_dot_product_attention
    def f():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            sd(qt, kt, vt, is_causal=mask != "none").backward(gt)
    return f

def host_time(step, inputs, n=30):
    torch.cuda.synchronize()
    torch.cuda._sleep(int(3e9))  # ~1.5 s of GPU work ahead: the queue never drains
    ts = []
    for _ in range(n):
        for t in inputs: t.grad = None
        t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(ts) * 1e6

def device_time(step, inputs, n=10):
    from torch.profiler import profile, ProfilerActivity
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            for t in inputs: t.grad = None
            step()
        torch.cuda.synchronize()
    kern = {}
    total = 0.0
    for e in prof.events():
        if e.device_type.name == "CUDA":
            kern.setdefault(e.name[:60], []).append(e.device_time)
            total += e.device_time
    return total / n, {k: (len(v) / n, statistics.mean(v)) for k, v in kern.items()}

rows = []
log = open(f"{out_dir}/s23a.log", "w")
for d, s, mask in SHAPES:
    q, k, v, g = make(d, s)
    for impl in ("flashtron", "cudnn"):
        if impl == "cudnn" and mask == "window":
            continue
        step = step_fn(impl, mask, q, k, v, g)
        step(); torch.cuda.synchronize()
        ms = triton.testing.do_bench(step, warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median")
        host = host_time(step, (q, k, v))
        busy, kern = device_time(step, (q, k, v))
        ms2 = triton.testing.do_bench(step, warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median")
        rows.append((d, s, mask, impl, ms, ms2, host, busy))
        print(d, s, mask, impl, f"bench {ms*1e3:.0f}/{ms2*1e3:.0f} us host {host:.0f} us busy {busy:.0f} us", file=log)
        for name, (cnt, us) in sorted(kern.items(), key=lambda x: -x[1][1] * x[1][0]):
            print(f"    {cnt:4.1f} x {us:8.1f} us  {name}", file=log)
        log.flush()
print("D     S  mask    impl       bench_us(2)   host_us  busy_us")
for r in rows:
    print(f"{r[0]:3d} {r[1]:5d} {r[2]:7s} {r[3]:9s} {r[4]*1e3:6.0f} {r[5]*1e3:6.0f} {r[6]:8.0f} {r[7]:8.0f}")
