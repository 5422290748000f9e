"""Session 24 (c): why did the broken v5 build run the causal backward kernel 6% faster than HEAD?  HEAD's backward
kernel timed (profiler) with dQ's float32 buffer (1) fresh each call and zeroed by the delta pass (HEAD), (2) kept
across calls and zeroed by the delta pass, (3) kept and not zeroed (timing only); and v1 / v5 again."""
import os, sys, inspect, textwrap
for d in ("experiments/base24", "experiments/s24/pk_v1", "experiments/s24/pk_v5"):
    sys.path.insert(0, d)
import torch
import flashtron_base, flashtron_v1, flashtron_v5
from flashtron_base.kernels import hopper_backward as hb
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
orig = hb.backward
src = textwrap.dedent(inspect.getsource(orig))
KEEP = {}
src_keep = src.replace("    dq_buffer = (torch.zeros if varlen is not None else torch.empty)(numel + 1, dtype=torch.float32, device=q.device)",
                       "    dq_buffer = KEEP.setdefault(numel, torch.zeros(numel + 1, dtype=torch.float32, device=q.device))")
assert src_keep != src
src_nozero = src_keep.replace("SEQUSED_Q=False, ZERO_DQ=varlen is None)", "SEQUSED_Q=False, ZERO_DQ=False)")
assert src_nozero != src_keep
ns_keep, ns_nozero = dict(vars(hb)), dict(vars(hb))
ns_keep["KEEP"] = ns_nozero["KEEP"] = KEEP
exec(src_keep.replace("def backward(", "def backward_keep("), ns_keep)
exec(src_nozero.replace("def backward(", "def backward_nozero("), ns_nozero)
modes = {"head": orig, "keep": ns_keep["backward_keep"], "nozero": ns_nozero["backward_nozero"]}


def kernel_times(fn, reps=5):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return {e.key[:30]: round(e.device_time_total / e.count, 1) for e in prof.key_averages() if e.device_time_total > 0}


for D, S, mask in [(128, 16384, "causal"), (128, 16384, "window"), (128, 1024, "none"), (128, 2048, "causal")]:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (1024, 0)
    for rnd in range(2):
        for name, fn in modes.items():
            hb.backward = fn
            t = kernel_times(lambda: torch.autograd.grad(flashtron_base.flash_attn_func(q, k, v, **kw), (q, k, v), dout))
            print(f"D{D} S{S} {mask} {name}: bwd kernel {t.get('hopper_backward_kernel')} pre "
                  f"{t.get('attention_backward_preprocess')} post {t.get('attention_backward_postprocess')}", flush=True)
        hb.backward = orig
        for name, lib in (("v1", flashtron_v1), ("v5", flashtron_v5)):
            t = kernel_times(lambda: torch.autograd.grad(lib.flash_attn_func(q, k, v, **kw), (q, k, v), dout))
            print(f"D{D} S{S} {mask} {name}: bwd kernel {t.get('hopper_backward_kernel')} pre "
                  f"{t.get('attention_backward_preprocess')}", flush=True)
