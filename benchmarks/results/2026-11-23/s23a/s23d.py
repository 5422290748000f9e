"""Host time of one eager step, layer by layer (inclusive µs per call), GPU kept busy so nothing waits."""
import sys, time, statistics, collections, functools
import torch
import flashtron
from flashtron import interface, validation, ops
from flashtron.kernels import launch, hopper_forward, hopper_backward, compiled, backward as bwmod
import flashtron.kernels.launch as L

acc = collections.defaultdict(list)


def wrap(mod, name, label=None):
    fn = getattr(mod, name)
    label = label or f"{getattr(mod, '__name__', mod)}.{name}"

    @functools.wraps(fn)
    def w(*a, **k):
        t = time.perf_counter_ns()
        try:
            return fn(*a, **k)
        finally:
            acc[label].append(time.perf_counter_ns() - t)
    setattr(mod, name, w)


for mod, name in [(interface, "_attention"), (validation, "check_qkv"), (ops, "attention"), (launch, "forward"),
                  (hopper_forward, "forward"), (hopper_forward, "unsupported_reason"), (hopper_forward, "descriptor"),
                  (ops, "_backward"), (launch, "backward"), (hopper_backward, "backward"),
                  (hopper_backward, "unsupported_reason"), (L, "sink_gradient"), (L, "_bias_gradient"),
                  (L, "_new_output"), (L, "_hopper_operands")]:
    wrap(mod, name)
hopper_backward.descriptor = hopper_forward.descriptor
orig_launch = compiled.FastLaunch.launch


def timed_launch(self, grid, args, kwargs):
    t = time.perf_counter_ns()
    try:
        return orig_launch(self, grid, args, kwargs)
    finally:
        acc[f"launch {self.kernel.fn.__name__ if hasattr(self.kernel, 'fn') else '?'}"].append(time.perf_counter_ns() - t)


compiled.FastLaunch.launch = timed_launch
for d, s, causal in ((128, 1024, True), (64, 1024, False)):
    b, h = 16384 // s, 2048 // d
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        for t in (q, k, v): t.grad = None
        flashtron.flash_attn_func(q, k, v, causal=causal).backward(g)
    torch.cuda.synchronize()
    acc.clear()
    torch.cuda._sleep(int(5e9))
    tf, tb = [], []
    for _ in range(200):
        for t in (q, k, v): t.grad = None
        t0 = time.perf_counter_ns(); o = flashtron.flash_attn_func(q, k, v, causal=causal); t1 = time.perf_counter_ns()
        o.backward(g); t2 = time.perf_counter_ns()
        tf.append(t1 - t0); tb.append(t2 - t1)
    torch.cuda.synchronize()
    print(f"D{d} S{s} causal={causal}: forward call {statistics.median(tf)/1e3:.0f} us, backward call "
          f"{statistics.median(tb)/1e3:.0f} us")
    for name, v_ in sorted(acc.items(), key=lambda x: -sum(x[1])):
        print(f"   {len(v_)/200:4.1f} x {statistics.median(v_)/1e3:7.1f} us  {name}")
