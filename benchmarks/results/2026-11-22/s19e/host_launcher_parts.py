"""Session 19: the backward launcher's host time taken apart (1k causal, B=16, H=16, D=128), GPU kept busy by a
sleep kernel.  Median of 60 calls, microseconds."""
import time, statistics
import torch, triton
from triton import knobs
from flashtron.kernels import launch, hopper_forward as hf, hopper_backward as hb, hardware
from flashtron.kernels.hopper_forward import descriptor, LOG2E
print(torch.cuda.get_device_name(), flush=True)

def host_us(fn, n=60):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for i in range(n):
        if i % 10 == 0:
            torch.cuda.synchronize(); torch.cuda._sleep(50_000_000)
        t0 = time.perf_counter(); fn(); ts.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(ts)

B, S, H, D = 16, 1024, 16, 128
qd, kd, vd, g = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
sc = D ** -0.5
out, lse = launch.forward(qd, kd, vd, sc, -1, 0, 0.0, None, None, 0.0, None, False)
dq_, dk_, dv_ = (torch.empty_like(t) for t in (qd, kd, vd))
delta = torch.empty_like(lse)
box = (1, 64, D)
dq_buffer = torch.zeros(qd.numel() + 1, dtype=torch.float32, device="cuda")
dq_accum = dq_buffer[:qd.numel()].view(qd.shape); counter = dq_buffer[qd.numel():].view(torch.int32)
def descs():
    return ([descriptor(t, box) for t in (qd, kd, vd, g)] + [descriptor(dq_accum, (1, 64, D // 2))]
            + [descriptor(t, box) for t in (dk_, dv_)])
ds = descs()
nnb = S // 128; tiles = nnb * B * H
args = (*ds, counter, lse, delta, lse.stride(0), lse, lse, dk_, dv_, H, 1, S, S, nnb, tiles,
        hb._head_group(B * H, nnb, 132), sc * LOG2E, sc, 0, 0)
kw = dict(HAS_LEFT=False, HAS_RIGHT=True, PERSISTENT=False, VARLEN=False, RING=2, CONSUMER_REGS=240, num_warps=4)
kern = hb.hopper_backward_kernel
compiled = kern[(tiles,)](*args, **kw)
dev = torch.cuda.current_device()
kernel_cache, kernel_key_cache, target, backend, binder = kern.device_caches[dev]
def bind():
    k2 = dict(kw); k2["debug"] = False; k2["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    return binder(*args, **k2)
bound, spec, opts = bind()
stream = triton.runtime.driver.active.get_current_stream(dev)
def run_only():
    md = compiled.launch_metadata((tiles, 1, 1), stream, *bound.values())
    compiled.run(tiles, 1, 1, stream, compiled.function, compiled.packed_metadata, md, None, None, *bound.values())
def prefix():
    outs = [launch._new_output(t.shape, t.dtype, t.device) for t in (qd, kd, vd)]
    d = launch._new_output(lse.shape, torch.float32, lse.device)
    lay = launch._layout_args(qd, kd, lse, None, None, None, None, -1, -1)
    hop = launch._hopper_operands((g, qd, kd, vd, *outs), None, None, -1, -1)
    return hb.unsupported_reason(*hop[0][:4], sc, -1, 0, 0.0, None, None, 0.0, True, hop[1])
parts = {
    "launch.backward": lambda: launch.backward(g, qd, kd, vd, out, lse, sc, -1, 0, 0.0, None, None, 0.0, None, False),
    "hopper_backward.backward": lambda: hb.backward(g, qd, kd, vd, lse, delta, dq_, dk_, dv_, sc, -1, 0),
    "launcher prefix (outputs, layouts, operands, reason)": prefix,
    "7 descriptors": descs,
    "1 descriptor": lambda: descriptor(qd, box),
    "torch.zeros dq buffer": lambda: torch.zeros(qd.numel() + 1, dtype=torch.float32, device="cuda"),
    "kernel[(grid,)](...) JIT launch": lambda: kern[(tiles,)](*args, **kw),
    "binder only": bind,
    "compiled.run only (7 tensormaps encoded)": run_only,
    "sm_count": lambda: hardware.sm_count(qd.device),
}
for rnd in range(2):
    for name, fn in parts.items():
        print(f"round {rnd}: {host_us(fn):8.1f} us  {name}", flush=True)
