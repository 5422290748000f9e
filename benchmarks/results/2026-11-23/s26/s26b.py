"""Session 26 (b): the D = 64 forward with key blocks taken two at a time (hopper_forward.PAIRED: S_j and S_{j+1}
issued together) against HEAD (flashtron_base), same process.  Per case: the forward kernel's time from the
profiler and the forward call by do_bench (best of 3 interleaved rounds), and the outputs against HEAD's (bit for
bit expected: the same operations per row in the same order)."""
import os, sys, json
sys.path.insert(0, "experiments/base26")
import torch, triton.testing
import flashtron, flashtron_base
from flashtron.kernels import hopper_forward as hf
from torch.profiler import profile, ProfilerActivity
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2602)


def kernel_time(fn, name="hopper_forward_kernel", reps=10):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    for e in prof.key_averages():
        if e.key.startswith(name):
            return e.device_time_total / e.count
    return float("nan")


def paired(fn, on):
    def run():
        old = hf.PAIRED
        hf.PAIRED = on
        try:
            return fn()
        finally:
            hf.PAIRED = old
    return run


rows = []
CASES = [(64, S, "causal", False) for S in (1024, 2048, 4096)] + [(64, 1024, "none", False), (64, 16384, "window", False),
         (64, 4096, "causal", True), (64, 4096, "none", True)]
with torch.no_grad():
    for D, S, mask, varlen in CASES:
        B, H = 16384 // S, 2048 // D
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        kw = dict(causal=mask != "none")
        if mask == "window":
            kw["window_size"] = (1024, 0)
        if varlen:
            lengths = torch.randint(S // 4, S + 1, (B * 2,)).tolist()
            lengths[0] = S
            total = sum(lengths)
            cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
            qv, kv_, vv = (torch.randn(total, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))

            def step(lib):
                return lambda: lib.flash_attn_varlen_func(qv, kv_, vv, cu, cu, S, S, **kw)
        else:
            def step(lib):
                return lambda: lib.flash_attn_func(q, k, v, **kw)
        fns = {"base": step(flashtron_base), "paired": paired(step(flashtron), True),
               "unpaired": paired(step(flashtron), False)}
        o = {n: f() for n, f in fns.items()}
        same = {n: bool(torch.equal(o[n], o["base"])) for n in fns if n != "base"}
        ms = {n: [] for n in fns}
        kt = {n: [] for n in fns}
        for r in range(3):
            for n, f in fns.items():
                ms[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median"))
                kt[n].append(kernel_time(f))
        best = {n: min(x) for n, x in ms.items()}
        kbest = {n: min(x) for n, x in kt.items()}
        rows.append(dict(D=D, S=S, mask=mask, varlen=varlen, ms=best, all_ms=ms, kernel_us=kbest, all_kernel=kt,
                         same=same))
        print(f"D{D} S{S} {mask}{' varlen' if varlen else ''}: fwd kernel base {kbest['base']:.1f} us | paired "
              f"{kbest['paired']:.1f} ({kbest['base'] / kbest['paired']:.3f}x, call {best['base'] / best['paired']:.3f}x)"
              f" | unpaired {kbest['unpaired']:.1f} ({kbest['base'] / kbest['unpaired']:.3f}x) | same as base {same}",
              flush=True)
json.dump(rows, open(os.path.join(OUT, "s26b.json"), "w"), indent=1)
