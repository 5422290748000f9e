"""Session 36 (b): FP8 forward shapes (consumers, keys per block, ring slots) against the shipped (2, 128, 2) and
bf16, interleaved do_bench rounds (median of 5), D 128, H 16; each variant first checked against a float64
reference on the dequantized inputs (odd shape), next to the shipped shape's error."""
import statistics, sys
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_forward as hf

SHAPES = [(2, 128, 2), (3, 64, 3), (3, 64, 4), (2, 64, 3), (3, 128, 2), (3, 128, 3), (2, 128, 3)]


def run(fn, shape):
    hf.FP8_SHAPE = shape
    try:
        return fn()
    finally:
        hf.FP8_SHAPE = SHAPES[0]


def reference(q, k, v, causal):
    qf, kf, vf = (t.double().transpose(1, 2) for t in (q, k, v))
    s = qf @ kf.transpose(-1, -2) * q.shape[-1] ** -0.5
    if causal:
        sq, sk = s.shape[-2:]
        s = s.masked_fill(torch.ones(sq, sk, dtype=torch.bool, device=s.device).tril(sk - sq).logical_not(), float("-inf"))
    return (s.softmax(-1) @ vf).transpose(1, 2)


print(torch.cuda.get_device_name(), flush=True)
for causal in (False, True):
    q, k, v = (torch.randn(2, 1000, 4, 128, device="cuda").to(torch.float8_e4m3fn) for _ in range(3))
    ref = reference(q, k, v, causal)
    errs = {s: (run(lambda: flashtron.flash_attn_func(q, k, v, causal=causal), s).double() - ref).abs().max().item()
            for s in SHAPES}
    print("causal" if causal else "full", "max error vs float64:", {str(s): f"{e:.2e}" for s, e in errs.items()},
          flush=True)
rows = []
for B, S in ((4, 4096), (1, 16384)):
    q, k, v = (torch.randn(B, S, 16, 128, device="cuda").to(torch.float8_e4m3fn) for _ in range(3))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    for causal in (False, True):
        fp8 = lambda: flashtron.flash_attn_func(q, k, v, causal=causal)
        base_out = run(fp8, SHAPES[0]).float()
        diffs = {s: (run(fp8, s).float() - base_out).abs().max().item() for s in SHAPES[1:]}
        fns = {str(s): (lambda s=s: run(fp8, s)) for s in SHAPES}
        fns["bf16"] = lambda: flashtron.flash_attn_func(qb, kb, vb, causal=causal)
        t = {n: [] for n in fns}
        for _ in range(5):
            for n, f in fns.items():
                t[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3)
        m = {n: statistics.median(x) for n, x in t.items()}
        base = m[str(SHAPES[0])]
        cells = " | ".join(f"{m[str(s)]:.0f} ({base / m[str(s)]:.3f}x, {m['bf16'] / m[str(s)]:.2f}x bf16)" for s in SHAPES)
        rows.append(f"| {S} | {'causal' if causal else 'none'} | {m['bf16']:.0f} | {cells} |")
        print(rows[-1], "max diff vs shipped:", {str(s): f"{d:.1e}" for s, d in diffs.items()}, flush=True)
print("| S | mask | bf16 us | " + " | ".join(str(s) for s in SHAPES) + " |")
print("\n".join(rows))
