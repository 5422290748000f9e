"""Session 21 (f): FP8 Gluon forward at D = 128 with three consumers (192-row tiles) against two, interleaved."""
import os, json
import torch
import triton
from flashtron import flash_attn_func
from flashtron.kernels import hopper_forward as hf

OUT = os.environ.get("OUT", ".")
torch.manual_seed(0)
original = hf.consumer_count
rows = []
print(torch.cuda.get_device_name())
for s in (4096, 8192, 16384):
    b, h, d = 16384 // s, 16, 128
    qb, kb, vb = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (qb, kb, vb))
    ds = [torch.rand(b, h, device="cuda") + 0.5 for _ in range(3)]
    for causal in (False, True):
        call = lambda: flash_attn_func(q8, k8, v8, causal=causal, q_descale=ds[0], k_descale=ds[1], v_descale=ds[2])
        times, outs = {}, {}
        for _ in range(3):
            for name, cons, ks in (("c2", 2, 2), ("c3", 3, 2), ("c3k3", 3, 3)):
                hf.consumer_count = lambda *args, n=cons: n
                hf.K_STAGES = ks
                outs[name] = call()
                times.setdefault(name, []).append(triton.testing.do_bench(call, warmup=25, rep=100))
            hf.consumer_count, hf.K_STAGES = original, 2
            times.setdefault("bf16", []).append(triton.testing.do_bench(
                lambda: flash_attn_func(qb, kb, vb, causal=causal), warmup=25, rep=100))
        same = torch.equal(outs["c2"], outs["c3"]) and torch.equal(outs["c2"], outs["c3k3"])
        best = {n: min(t) for n, t in times.items()}
        f = 4.0 * b * s * s * h * d * (0.5 if causal else 1.0)
        rows.append(dict(s=s, causal=causal, same=same, **best))
        print(f"S{s} {'causal' if causal else 'full'} equal={same}: " +
              " ".join(f"{n} {f / m / 1e9:.0f}T" for n, m in best.items()) +
              f" | c3/c2 {best['c2'] / best['c3']:.3f} c3k3/c2 {best['c2'] / best['c3k3']:.3f}"
              f" fp8(c2)/bf16 {best['bf16'] / best['c2']:.3f}", flush=True)
json.dump(rows, open(os.path.join(OUT, "s21f.json"), "w"), indent=1)
