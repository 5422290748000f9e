"""Session 34 (k): PINGPONG for the FP8 forward, against the same code without it and against bf16, in interleaved
rounds (do_bench as the bench calls it, median of 5 rounds), D 128, H 16, 16k tokens; outputs compared first."""
import statistics, sys
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_forward as hf


def run(fn, pp):
    hf.PINGPONG_FP8 = pp
    try:
        return fn()
    finally:
        hf.PINGPONG_FP8 = True


print(torch.cuda.get_device_name(), flush=True)
rows = []
for B, S in ((4, 4096), (1, 16384)):
    q, k, v = (torch.randn(B, S, 16, 128, device="cuda").to(torch.float8_e4m3fn) for _ in range(3))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    for causal in (False, True):
        fp8 = lambda: flashtron.flash_attn_func(q, k, v, causal=causal)
        bf16 = lambda: flashtron.flash_attn_func(qb, kb, vb, causal=causal)
        same = torch.equal(run(fp8, True), run(fp8, False))
        fns = {"pp": lambda: run(fp8, True), "plain": lambda: run(fp8, False), "bf16": bf16}
        t = {n: [] for n in fns}
        for _ in range(5):
            for n, f in fns.items():
                t[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3)
        m = {n: statistics.median(x) for n, x in t.items()}
        rows.append(f"| {S} | {'causal' if causal else 'none'} | {m['plain']:.0f} | {m['pp']:.0f} | {m['bf16']:.0f} | "
                    f"{m['plain'] / m['pp']:.3f}x | {m['bf16'] / m['plain']:.2f}x | {m['bf16'] / m['pp']:.2f}x | {same} |")
        print(rows[-1], flush=True)
print("| S | mask | FP8 (µs) | FP8 PINGPONG | bf16 | PINGPONG speed-up | FP8/bf16 before | after | same bits |")
print("\n".join(rows))
