"""Session 32 (e): the GPU's SM clock and power while issue 3's two steps are timed (`flashtron bench`'s do_bench:
window (1024, 0), then full causal, B 1, S 16k, H 16, D 128), sampled every 2 ms by NVML in a thread; each do_bench
call alone, then after 3 s idle.  Does the causal step's time follow the clock?"""
import threading, time, statistics
import torch, triton.testing
import flashtron

try:
    import pynvml
    pynvml.nvmlInit()
    HANDLE = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception as exc:  # noqa
    print("no NVML:", exc)
    HANDLE = None

B, S, H, D = 1, 16384, 16, 128
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)


def sampled(fn):
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            clk = pynvml.nvmlDeviceGetClockInfo(HANDLE, pynvml.NVML_CLOCK_SM)
            pw = pynvml.nvmlDeviceGetPowerUsage(HANDLE) / 1000
            samples.append((clk, pw))
            time.sleep(0.002)
    t = threading.Thread(target=sample) if HANDLE else None
    if t:
        t.start()
    res = fn()
    if t:
        stop.set(); t.join()
    return res, samples


def desc(samples):
    if not samples:
        return ""
    clk = [c for c, _ in samples]
    pw = [p for _, p in samples]
    return (f"SM clock median {statistics.median(clk):.0f} MHz (min {min(clk)}, max {max(clk)}), power median "
            f"{statistics.median(pw):.0f} W (max {max(pw):.0f}), {len(samples)} samples")


print(torch.cuda.get_device_name(), flush=True)
steps = {"window": lambda: flashtron.flash_attn_func(q, k, v, window_size=(1024, 0)).backward(grad),
         "causal": lambda: flashtron.flash_attn_func(q, k, v, causal=True).backward(grad)}
for f in steps.values():
    f()
torch.cuda.synchronize()
for idle in (0, 3, 0, 0, 3):
    time.sleep(idle)
    for name in ("causal", "window"):
        ms, smp = sampled(lambda: triton.testing.do_bench(steps[name], grad_to_none=[q, k, v], return_mode="median"))
        print(f"after {idle} s idle: {name} {ms * 1e3:.1f} us | {desc(smp)}", flush=True)
