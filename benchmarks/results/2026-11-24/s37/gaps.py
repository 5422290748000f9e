"""s37c: where the GPU idles in a Keras MultiHeadAttention step (flashtron.keras.enable(), bf16, B=4, T=4096,
16 heads of 128, causal): kernel timeline of 5 profiled steps, gaps between kernels."""
import json, os, sys
os.environ["KERAS_BACKEND"] = "torch"
import torch
import keras
import flashtron.keras as fk
from torch.profiler import profile, ProfilerActivity

keras.config.set_dtype_policy("bfloat16")
keras.config.enable_flash_attention()
torch.manual_seed(0)
B, T, N, H = 4, 4096, 16, 128
layer = keras.layers.MultiHeadAttention(num_heads=N, key_dim=H)
x = torch.randn(B, T, N * H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
g = torch.randn_like(x)
mode = sys.argv[1] if len(sys.argv) > 1 else "flashtron"
(fk.enable if mode == "flashtron" else fk.disable)()


def step():
    x.grad = None
    layer(x, x, use_causal_mask=True).backward(g)


for _ in range(5):
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
import time
for iters in (10, 20, 40):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    host = (time.perf_counter() - t0) / iters * 1e3
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / iters * 1e3
    print(f"{mode}: {iters} steps: host {host:.3f} ms/step, wall {wall:.3f} ms/step")
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(10):
    step()
    torch.cuda.synchronize()
print(f"{mode}: synchronised steps {(time.perf_counter() - t0) / 10 * 1e3:.3f} ms/step")
path = os.path.join(os.environ.get("OUT", "/tmp"), f"trace-{mode}.json")
prof.export_chrome_trace(path)
events = json.load(open(path))["traceEvents"]
kernels = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")), key=lambda e: e["ts"])
busy = sum(e["dur"] for e in kernels)
span = kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]
gaps = []
for a, b in zip(kernels, kernels[1:]):
    gap = b["ts"] - (a["ts"] + a["dur"])
    gaps.append((gap, a["name"][:60], b["name"][:60]))
print(f"{mode}: {len(kernels)} kernels in 5 steps; span {span / 5:.1f} us/step, busy {busy / 5:.1f} us/step, "
      f"idle {(span - busy) / 5:.1f} us/step")
by_pair = {}
for gap, a, b in gaps:
    by_pair.setdefault((a, b), []).append(gap)
rows = sorted(by_pair.items(), key=lambda kv: -sum(kv[1]))[:14]
for (a, b), gs in rows:
    print(f"  {sum(gs) / 5:8.1f} us/step  n={len(gs):3d} max {max(gs):7.1f}  {a}  ->  {b}")
