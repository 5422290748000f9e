"""Session 34 (e): FP8 forward against bf16, kernel by kernel (torch.profiler, device time per call, 20 calls), and
the whole call (CUDA events, interleaved rounds: median of 5 rounds of 20): the keys-innermost copy as a Triton
kernel (now) and as torch's permuted copy (before).  H 16, D 128, 16k tokens."""
import statistics, collections
import torch
from torch.profiler import profile, ProfilerActivity
import flashtron
from flashtron.kernels import transpose

new_copy = transpose.keys_innermost


def old_copy(v, vt, target=None):
    batch, seqlen, heads, head_dim = v.shape
    vt.view(batch, heads, head_dim, vt.shape[2])[..., :seqlen].copy_(v.permute(0, 2, 3, 1))
    vt[..., seqlen:].zero_()
    return vt


def per_kernel(fn, n=20):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    t = collections.defaultdict(float)
    for e in p.key_averages():
        if e.device_type.name == "CUDA" or getattr(e, "device_time_total", 0) > 0:
            t[e.key[:60]] += e.device_time_total / n
    return {k: v for k, v in t.items() if v > 0.5}


def rounds(fns, n=20, r=5):
    res = [[] for _ in fns]
    for _ in range(r):
        for i, fn in enumerate(fns):
            fn(); torch.cuda.synchronize()
            ev = []
            for _ in range(n):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(); fn(); b.record()
                ev.append((a, b))
            torch.cuda.synchronize()
            res[i].append(statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3)
    return [statistics.median(x) for x in res]


def with_copy(copy, fn):
    def g():
        transpose.keys_innermost = copy
        try:
            return fn()
        finally:
            transpose.keys_innermost = new_copy
    return g


print(torch.cuda.get_device_name())
table = []
for B, S in ((16, 1024), (4, 4096), (1, 16384)):
    H, D = 16, 128
    q, k, v = (torch.randn(B, S, H, D, device="cuda").to(torch.float8_e4m3fn) for _ in range(3))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    for causal in (False, True):
        fp8 = lambda: flashtron.flash_attn_func(q, k, v, causal=causal)
        bf16 = lambda: flashtron.flash_attn_func(qb, kb, vb, causal=causal)
        kn = per_kernel(fp8)
        kb_ = per_kernel(bf16)
        print(f"B{B} S{S} {'causal' if causal else 'none'}: fp8 kernels " +
              ", ".join(f"{k} {v:.1f}" for k, v in kn.items()) + " | bf16 " +
              ", ".join(f"{k} {v:.1f}" for k, v in kb_.items()), flush=True)
        t_new, t_old, t_bf = rounds([fp8, with_copy(old_copy, fp8), bf16])
        table.append(f"| {S} | {'causal' if causal else 'none'} | {t_old:.0f} | {t_new:.0f} | {t_bf:.0f} | "
                     f"{t_bf / t_old:.2f}x | {t_bf / t_new:.2f}x |")
print("| S | mask | FP8 call, torch copy (us) | FP8 call, kernel copy | bf16 call | FP8/bf16 speed before | after |")
print("\n".join(table))
