"""Session 34 (j): why `flashtron bench`'s bf16 forward rows at 16k run ~12% below the kernel's rate while FP8's
rows match theirs.  bf16 and FP8 forward (D 128, 16k, B 1, H 16, no mask), each timed four ways, in rounds:
(1) triton.testing.do_bench as the bench calls it (grad_to_none, L2 cleared, median); (2) the same loop without the
L2 clear; (3) 40 calls back to back, events around each; (4) the profiler's kernel time.  The SM clock is sampled
by nvidia-smi in the background (clocks.log)."""
import statistics, collections, time
import torch, triton.testing
from torch.profiler import profile, ProfilerActivity
import flashtron

S, H, D = 16384, 16, 128
qb, kb, vb = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (qb, kb, vb))
cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
fns = {"bf16": lambda: flashtron.flash_attn_func(qb, kb, vb), "fp8": lambda: flashtron.flash_attn_func(q8, k8, v8)}


def loop(fn, clear, n=40):
    ev = []
    for _ in range(n):
        if clear:
            cache.zero_()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        ev.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3


def kernel(fn, n=20):
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in p.key_averages() if "hopper_forward" in e.key) / n


flops = 4 * S * S * H * D
for f in fns.values():
    f()
torch.cuda.synchronize()
print(torch.cuda.get_device_name(), time.strftime("%H:%M:%S"))
for rnd in range(3):
    for name, fn in fns.items():
        t0 = time.strftime("%H:%M:%S")
        db = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
        clear = loop(fn, True)
        plain = loop(fn, False)
        kern = kernel(fn)
        print(f"round {rnd} {name} ({t0}): do_bench {db:.0f} us ({flops / db / 1e6:.0f} TF/s), loop with L2 clear "
              f"{clear:.0f}, back to back {plain:.0f}, kernel {kern:.0f} ({flops / kern / 1e6:.0f} TF/s)", flush=True)
