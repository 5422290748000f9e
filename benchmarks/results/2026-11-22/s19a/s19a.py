"""Where short forward+backward steps lose to cuDNN: host time (GPU kept busy), eager do_bench time (as
`flashtron bench`), and device busy time per kernel (profiler), flashtron against SDPA-cuDNN."""
import time, statistics, sys
import torch, triton.testing
from torch.profiler import profile, ProfilerActivity
from torch.nn.attention import sdpa_kernel, SDPBackend
from flashtron import flash_attn_func
print(torch.cuda.get_device_name(), flush=True)
T, HID = 16384, 2048
shapes = [(128, 1024, True), (128, 2048, True), (128, 4096, True), (128, 16384, True),
          (64, 1024, True), (64, 2048, True), (64, 2048, False), (64, 16384, False)]

def host_us(fn, inputs, n=30):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for i in range(n):
        if i % 6 == 0:
            torch.cuda.synchronize(); torch.cuda._sleep(60_000_000)
        for t in inputs: t.grad = None
        t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(ts)

def prof_kernels(fn, inputs, n=5):
    for t in inputs: t.grad = None
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            for t in inputs: t.grad = None
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    agg = {}
    for e in ev:
        agg.setdefault(e.name[:60], []).append(e.time_range.elapsed_us())
    busy = sum(sum(v) for v in agg.values()) / n
    return busy, sorted(((sum(v) / n, len(v) / n, k) for k, v in agg.items()), reverse=True)

summary = []
for D, S, causal in shapes:
    B, H = T // S, HID // D
    base = torch.randn(3, B, S, H, D, device="cuda", dtype=torch.bfloat16)
    row = [f"D{D} S{S} {'causal' if causal else 'full'}"]
    for impl in ("flashtron", "cudnn"):
        if impl == "flashtron":
            q, k, v = (t.clone().requires_grad_() for t in base)
            g = torch.randn_like(q)
            step = lambda: flash_attn_func(q, k, v, causal=causal).backward(g)
            fwd = lambda: flash_attn_func(q, k, v, causal=causal)
        else:
            q, k, v = (t.transpose(1, 2).contiguous().requires_grad_() for t in base)
            g = torch.randn_like(q)
            def step():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(g)
            def fwd():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ins = [q, k, v]
        h = host_us(step, ins)
        hf = host_us(fwd, ins)
        ms = triton.testing.do_bench(step, warmup=25, rep=100, grad_to_none=ins, return_mode="median")
        busy, ks = prof_kernels(step, ins)
        print(f"{row[0]} {impl}: eager {ms*1e3:.0f} us, host step {h:.0f} us (fwd {hf:.0f}), device busy {busy:.0f} us", flush=True)
        for us, cnt, name in ks[:8]:
            print(f"      {us:8.1f} us x{cnt:.0f} {name}")
        row += [ms * 1e3, h, busy]
    summary.append(row)
print("\nshape | flashtron eager/host/busy us | cudnn eager/host/busy us | busy ratio cudnn/flashtron | eager ratio")
for r in summary:
    print(f"{r[0]:18s} | {r[1]:6.0f} {r[2]:6.0f} {r[3]:6.0f} | {r[4]:6.0f} {r[5]:6.0f} {r[6]:6.0f} | {r[6]/r[3]:.3f} | {r[4]/r[1]:.3f}")
