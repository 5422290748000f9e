"""Host time of the eager call's Python layers on CPU tensors, the Hopper host functions' plans stubbed (no launch)."""
import cProfile, pstats, io, statistics, time, sys
import torch
import flashtron
from flashtron import ops
from flashtron.kernels import hardware, hopper_forward, hopper_backward, launch

ops._engine = lambda t: launch

hardware.capability = lambda device: (9, 0)
hopper_forward._GLUON = True


class Plans(dict):
    def get(self, key, default=None):
        return self.noop

    noop = staticmethod(lambda *a: None)


class BwdPlans(Plans):
    noop = (Plans.noop,) * 3


hopper_forward._PLANS = Plans()
hopper_backward._PLANS = BwdPlans()
D, S = 128, 1024
q, k, v = (torch.randn(16, S, 16, D, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
grad = torch.randn_like(q)


def step():
    for t in (q, k, v):
        t.grad = None
    flashtron.flash_attn_func(q, k, v, causal=True).backward(grad)


def fwd():
    with torch.no_grad():
        flashtron.flash_attn_func(q, k, v, causal=True)


for fn in (step, fwd):
    fn()
    ts = []
    for _ in range(300):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    print(fn.__name__, f"{statistics.median(ts) * 1e6:.1f} us")
prof = cProfile.Profile()
prof.enable()
for _ in range(300):
    step()
prof.disable()
s = io.StringIO()
pstats.Stats(prof, stream=s).sort_stats(sys.argv[1] if len(sys.argv) > 1 else "tottime").print_stats(30)
print(s.getvalue())
