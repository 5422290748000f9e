"""Session 19: host time of the eager step's layers at 1k causal (B=16, H=16, D=128), GPU kept busy by a sleep
kernel so no call waits on the device.  Median of 60 calls, microseconds; then cProfile of the backward's
launcher run on the main thread."""
import time, statistics, cProfile, pstats, io, threading
import torch, triton
from flashtron import flash_attn_func
from flashtron.kernels import launch, hopper_forward as hf, hopper_backward as hb, hardware
from flashtron.kernels.backward import attention_backward_preprocess, attention_backward_postprocess
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
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
g = torch.randn_like(q)
qd, kd, vd = (t.detach() for t in (q, k, v))
sc = D ** -0.5
out, lse = launch.forward(qd, kd, vd, sc, -1, 0, 0.0, None, None, 0.0, None, False)
dq_, dk_, dv_ = (torch.empty_like(t) for t in (qd, kd, vd))
delta = torch.empty_like(lse)
box = (1, 64, D)

def step():
    q.grad = k.grad = v.grad = None
    flash_attn_func(q, k, v, causal=True).backward(g)
def fwd_grad():
    return flash_attn_func(q, k, v, causal=True)
o_keep = fwd_grad()
def bwd_only():
    q.grad = k.grad = v.grad = None
    torch.autograd.backward(o_keep, g, retain_graph=True)
def pre():
    attention_backward_preprocess[launch._grid(16, B * H)](out, g, delta, *out.stride()[:3], *g.stride()[:3], 0, 0,
        qd, qd, H, S, 16, D, BLOCK_D=128, EVEN_D=True, BLOCK_M=64, VARLEN=False, SEQUSED_Q=False)
dqa = torch.zeros(qd.numel() + 1, dtype=torch.float32, device="cuda")
def post():
    attention_backward_postprocess[(triton.cdiv(dq_.numel(), hb.POSTPROCESS_BLOCK), )](
        dqa, dq_, dq_.numel(), sc, BLOCK=hb.POSTPROCESS_BLOCK, UPCAST=False)
parts = {
    "step fwd+bwd (eager, autograd thread)": step,
    "fwd flash_attn_func with grad": fwd_grad,
    "bwd autograd.backward alone": bwd_only,
    "launch.forward": lambda: launch.forward(qd, kd, vd, sc, -1, 0, 0.0, None, None, 0.0, None, False),
    "hopper_forward.forward": lambda: hf.forward(qd, kd, vd, out, lse, sc, -1, 0),
    "launch.backward": lambda: launch.backward(g, qd, kd, vd, out, lse, sc, -1, 0, 0.0, None, None, 0.0, None, False),
    "hopper_backward.backward": lambda: hb.backward(g, qd, kd, vd, lse, delta, dq_, dk_, dv_, sc, -1, 0),
    "hopper_backward.unsupported_reason": lambda: hb.unsupported_reason(g, qd, kd, vd, sc, -1, 0, 0.0, None, None, 0.0, True),
    "preprocess launch": pre,
    "postprocess launch": post,
    "torch.zeros dq buffer": lambda: torch.zeros(qd.numel() + 1, dtype=torch.float32, device="cuda"),
    "4 descriptors": lambda: [hf.descriptor(t, box) for t in (qd, kd, vd, g)],
    "3 empty_like": lambda: [torch.empty_like(t) for t in (qd, kd, vd)],
}
for rnd in range(2):
    for name, fn in parts.items():
        print(f"round {rnd}: {host_us(fn):8.1f} us  {name}", flush=True)

for name, fn in (("launch.backward", parts["launch.backward"]), ("step (main thread part)", step)):
    torch.cuda.synchronize(); torch.cuda._sleep(200_000_000)
    pr = cProfile.Profile(); pr.enable()
    for _ in range(30): fn()
    pr.disable(); torch.cuda.synchronize()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(28)
    print(f"=== cProfile {name}, 30 calls, by tottime\n" + "\n".join(s.getvalue().splitlines()[:45]))
