"""Session 32 (g): the host's part of issue 6's short cells.  For D = 128 causal and D = 64 without a mask at 1k
(B 16, H 2048 / D) and D = 128 causal at 2k: (1) do_bench as `flashtron bench` calls it, the same loop with a GPU
sleep queued before each step (the host then ahead: device-bound time), and SDPA-cuDNN's do_bench; (2) host time per
step, split by wrapped functions (perf_counter; 40 steps with the GPU kept busy)."""
import collections, time, statistics, functools
import torch, triton.testing
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
import flashtron
from flashtron import interface as itf, ops, validation as val
from flashtron.kernels import launch as L, hopper_forward as hf, hopper_backward as hb, compiled as C

T = collections.defaultdict(float)


def timed(label, f):
    @functools.wraps(f)
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            T[label] += time.perf_counter() - t
    return g


for mod, name, label in [(itf, "_attention", "fwd: interface._attention (all)"),
                         (val, "check_qkv", "fwd: validation.check_qkv"),
                         (ops, "attention", "fwd: ops.attention"),
                         (L, "forward", "fwd: launch.forward"), (hf, "forward", "fwd: hopper_forward.forward"),
                         (hf, "unsupported_reason", "hopper_forward.unsupported_reason"),
                         (hb, "unsupported_reason", "hopper_backward.unsupported_reason"),
                         (L, "backward", "bwd: launch.backward"), (hb, "backward", "bwd: hopper_backward.backward")]:
    setattr(mod, name, timed(label, getattr(mod, name)))
ops._Attention.backward = staticmethod(timed("bwd: ops._backward (device thread)", ops._backward))
_launch = C.FastLaunch.launch
C.FastLaunch.launch = lambda self, grid, args, kwargs: timed(
    "launch " + getattr(self.kernel, "fn", self.kernel).__name__, _launch)(self, grid, args, kwargs)


def cell(D, S, causal):
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    mine = lambda: flashtron.flash_attn_func(q, k, v, causal=causal).backward(grad)
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    gt = grad.transpose(1, 2).contiguous()

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(gt)
    return mine, cudnn, (q, k, v), (qt, kt, vt)


def sleep_loop(fn, tensors, n=40):
    cache = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    ev = []
    for _ in range(n):
        for t in tensors:
            t.grad = None
        cache.zero_()
        torch.cuda._sleep(int(2e-3 * 1.98e9))
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        ev.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3


print(torch.cuda.get_device_name(), flush=True)
for D, S, causal in [(128, 1024, True), (64, 1024, False), (128, 2048, True), (128, 1024, False)]:
    mine, cudnn, t1, t2 = cell(D, S, causal)
    for f in (mine, cudnn):
        f(); f()
    torch.cuda.synchronize()
    db = [triton.testing.do_bench(mine, grad_to_none=list(t1), return_mode="median") * 1e3 for _ in range(2)]
    dc = [triton.testing.do_bench(cudnn, grad_to_none=list(t2), return_mode="median") * 1e3 for _ in range(2)]
    sm, sc = sleep_loop(mine, t1), sleep_loop(cudnn, t2)
    # host split, GPU kept busy
    torch.cuda._sleep(int(0.2 * 1.98e9))
    T.clear()
    host = []
    for _ in range(40):
        for t in t1:
            t.grad = None
        h = time.perf_counter()
        mine()
        host.append(time.perf_counter() - h)
    torch.cuda.synchronize()
    hc = []
    torch.cuda._sleep(int(0.2 * 1.98e9))
    for _ in range(40):
        for t in t2:
            t.grad = None
        h = time.perf_counter()
        cudnn()
        hc.append(time.perf_counter() - h)
    torch.cuda.synchronize()
    print(f"D{D} S{S} {'causal' if causal else 'none'}: do_bench flashtron {db[0]:.0f} {db[1]:.0f} us, cuDNN "
          f"{dc[0]:.0f} {dc[1]:.0f} | device-bound (sleep first) flashtron {sm:.0f}, cuDNN {sc:.0f} | host per step "
          f"flashtron {statistics.median(host) * 1e6:.0f} us, cuDNN {statistics.median(hc) * 1e6:.0f} us", flush=True)
    for label, t in sorted(T.items()):
        print(f"    {label:45s} {t / 40 * 1e6:7.1f} us/step")
