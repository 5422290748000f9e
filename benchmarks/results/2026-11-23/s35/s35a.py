"""Session 35 (a): the host's time of the 1k causal D = 128 step, by part, on the GPU host.
Every figure is the median host time of one call (µs) with the GPU kept busy by a sleep queued ahead, so no
launch ever waits.  Parts: the whole step, the forward call alone, each layer's own time, one compiled launch
split into its Python key, Triton's launcher wrapper, the tensor maps and the C launch, an allocation, a
descriptor, and autograd's own costs measured on trivial Functions."""
import inspect, statistics, sys, time
import torch
import flashtron
from flashtron import ops, validation
from flashtron.kernels import compiled as fl, hopper_forward, hopper_backward, launch

D, S, causal = 128, 1024, True
B, H = 16384 // S, 2048 // D
dev = "cuda"
q, k, v = (torch.randn(B, S, H, D, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)


def busy(ms=200):
    torch.cuda._sleep(int(ms * 1e-3 * 1.98e9))


def timed(fn, n=200, ms=300):
    torch.cuda.synchronize()
    busy(ms)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e6


def step():
    for t in (q, k, v):
        t.grad = None
    flashtron.flash_attn_func(q, k, v, causal=causal).backward(grad)


def fwd_nograd():
    with torch.no_grad():
        flashtron.flash_attn_func(q, k, v, causal=causal)


for _ in range(3):
    step()
    fwd_nograd()
rows = []


def report(name, us):
    rows.append((name, us))
    print(f"{name:60s} {us:8.1f}", flush=True)


print(torch.cuda.get_device_name(), torch.__version__, flush=True)
for r in range(2):
    report(f"step fwd+bwd (multithreaded) r{r}", timed(step, 100))
    with torch.autograd.set_multithreading_enabled(False):
        report(f"step fwd+bwd (single-threaded) r{r}", timed(step, 100))
    report(f"forward call, no grad r{r}", timed(fwd_nograd))

# Layer by layer, forward (no grad): the interface, the engine's forward, the Hopper host function.
qd, kd, vd = (t.detach() for t in (q, k, v))
scale = D ** -0.5
args25 = (qd, kd, vd, scale, -1, 0, 0.0, None, None, 0.0, None, False, None, None, None, None, -1, -1, None, None,
          None, None, 1, False, None)
report("launch.forward (engine)", timed(lambda: launch.forward(*args25)))
out = torch.empty_like(qd)
lse = torch.empty(B, H, S, device=dev, dtype=torch.float32)
report("hopper_forward.forward (host function + launch)",
       timed(lambda: hopper_forward.forward(qd, kd, vd, out, lse, scale, -1, 0)))
report("hopper_forward.unsupported_reason",
       timed(lambda: hopper_forward.unsupported_reason(qd, kd, vd, scale, -1, 0, 0.0, None, None, 0.0, True, None)))
report("validation.check_qkv", timed(lambda: validation.check_qkv(q, k, v, ("q", "k", "v"), varlen=False, paged=False,
                                                                allow_fp8=True)))
report("torch.empty (B,S,H,D) bf16", timed(lambda: torch.empty(B, S, H, D, device=dev, dtype=torch.bfloat16)))
report("torch.empty_like", timed(lambda: torch.empty_like(qd)))
report("descriptor(q)", timed(lambda: hopper_forward.descriptor(qd, (1, 64, D))))

# The backward's host function and engine call (the plan path after the first call).
dout = grad.detach()
out2, lse2 = launch.forward(*args25)
delta = torch.empty_like(lse2)
dq, dk, dv = torch.empty_like(qd), torch.empty_like(kd), torch.empty_like(vd)
report("hopper_backward.backward (host function + 3 launches)",
       timed(lambda: hopper_backward.backward(dout, qd, kd, vd, out2, lse2, delta, dq, dk, dv, scale, -1, 0)))
bargs = (dout, qd, kd, vd, out2, lse2, scale, -1, 0, 0.0, None, None, 0.0, None, False)
report("launch.backward (engine)", timed(lambda: launch.backward(*bargs)))
report("hopper_backward.unsupported_reason", timed(lambda: hopper_backward.unsupported_reason(
    dout, qd, kd, vd, scale, -1, 0, 0.0, None, None, 0.0, True)))
if len(sys.argv) > 1:
    raise SystemExit
# One compiled launch of the forward kernel, split.
captured = {}
kernel = hopper_forward.hopper_forward_kernel
orig_launch = kernel.launch


def capture(grid, a, kw):
    captured.update(grid=grid, args=a, kwargs=kw)
    return orig_launch(grid, a, kw)


kernel.launch = capture
hopper_forward.forward(qd, kd, vd, out, lse, scale, -1, 0)
kernel.launch = orig_launch
grid, a, kw = captured["grid"], captured["args"], captured["kwargs"]
report("FastLaunch.launch (forward kernel)", timed(lambda: orig_launch(grid, a, kw)))
report("  key: tuple(map(spec, args))", timed(lambda: (0, tuple(map(fl.spec, a)), tuple(kw.items()))))
key = (torch.cuda.current_device(), tuple(map(fl.spec, a)), tuple(kw.items()))
report("  key hash + dict get", timed(lambda: kernel._compiled.get(key)))
ck = kernel._compiled[key]
names = kernel._names
values = (*a, *(kw[n] if n in kw else kernel._defaults[n] for n in names[len(a):]))
stream = torch.cuda.current_stream().cuda_stream
report("  _device_and_stream", timed(fl._device_and_stream))
report("  compiled.run (Triton's launcher object)",
       timed(lambda: ck.run(grid[0], 1, 1, stream, ck.function, ck.packed_metadata, None, None, None, *values)))
inner = ck.run.launch
cv = inspect.getclosurevars(inner).nonlocals
print("inner closure:", sorted(cv), flush=True)
raw = cv["launcher"]
from triton.backends.nvidia import driver as nvd
base = [grid[0], 1, 1, stream, ck.function, ck.run.launch_cooperative_grid, ck.run.launch_pdl, None, None,
        ck.packed_metadata, None, None, None]
final = list(base)
ti = 0
for i, x in enumerate(values):
    if i in cv["tensordesc_indices"]:
        final.extend(nvd.make_tensordesc_arg(x, cv["tensordesc_meta"][ti]))
        ti += 1
    else:
        final.append(x)
report("  inner (Triton's per-arg wrapper, maps included)",
       timed(lambda: inner(*base, *values)))
report("  make_tensordesc_arg x1", timed(lambda: nvd.make_tensordesc_arg(values[0], cv["tensordesc_meta"][0])))
report("  C launcher alone (prebuilt args, maps reused)", timed(lambda: raw(*final)))
print("C launcher arg count", len(final), flush=True)


# Autograd's own costs on trivial Functions.
class Trivial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        ctx.save_for_backward(*inputs[:3])
        return torch.empty_like(inputs[0]), torch.empty(B, H, S, device=dev)

    @staticmethod
    def backward(ctx, dout, dlse):
        x, y, z = ctx.saved_tensors
        return (torch.empty_like(x), torch.empty_like(y), torch.empty_like(z)) + (None, ) * 23


inputs26 = (q, k, v, scale, -1, 0, 0.0, None, None, 0.0, None, False, None, None, None, None, -1, -1, None, None,
            None, None, 1, False, None, False)


def trivial_step():
    for t in (q, k, v):
        t.grad = None
    Trivial.apply(*inputs26)[0].backward(grad)


def trivial_fwd():
    Trivial.apply(*inputs26)


def native_step():
    for t in (q, k, v):
        t.grad = None
    (q * 1.0).backward(grad)


report("trivial Function.apply (26 inputs)", timed(trivial_fwd))
report("trivial Function step (apply + backward)", timed(trivial_step))
with torch.autograd.set_multithreading_enabled(False):
    report("trivial Function step, single-threaded", timed(trivial_step))
report("native op step (q * 1.0).backward", timed(native_step))
report("ops._eager check", timed(lambda: ops._eager(q, k, v, None, None, None, None, None, None, None, None, None,
                                                     None, None, None)))
from torch.nn.attention import sdpa_kernel, SDPBackend


def cudnn_step():
    for t in (q, k, v):
        t.grad = None
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).backward(grad.transpose(1, 2))


cudnn_step()
report("sdpa cudnn step", timed(cudnn_step))
print("\nSUMMARY")
for name, us in rows:
    print(f"{name:60s} {us:8.1f}")
