"""Session 21 (d): FP8 on the Gluon forward, three forms (env FP8_P_SMEM, FP8_FOLD; run with
PYTHONPATH=experiments/fp8pkg), against the portable FP8 kernel and the bf16 Gluon forward, forward only."""
import os, sys, json
import torch
import triton
import flashtron
from flashtron import flash_attn_func
from flashtron.kernels import hopper_forward as hf

assert "fp8pkg" in flashtron.__file__, flashtron.__file__
OUT = os.environ.get("OUT", ".")
tag = f"psmem{os.environ.get('FP8_P_SMEM', '1')}_fold{os.environ.get('FP8_FOLD', '1')}"
torch.manual_seed(0)
rows = []


def flops(b, s, h, d, causal):
    return 4.0 * b * s * s * h * d * (0.5 if causal else 1.0)


for d, seqlens in ((128, (4096, 16384)), (64, (4096, 16384))):
    h = 2048 // d
    for s in seqlens:
        b = 16384 // s
        qb, kb, vb = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (qb, kb, vb))
        ds = [torch.rand(b, h, device="cuda") + 0.5 for _ in range(3)]
        for causal in (False, True):
            call = lambda: flash_attn_func(q8, k8, v8, causal=causal, q_descale=ds[0], k_descale=ds[1],
                                           v_descale=ds[2])
            res = {}
            hf._DISABLED = True
            ref = call()
            for name, ks, vs, dis in (("portable", 2, 2, True), ("gluon22", 2, 2, False), ("gluon33", 3, 3, False)):
                hf.K_STAGES, hf.V_STAGES, hf._DISABLED = ks, vs, dis
                out = call()
                err = (out.float() - ref.float()).abs().max().item()
                res[name] = (triton.testing.do_bench(call, warmup=25, rep=100), err)
            hf.K_STAGES, hf.V_STAGES, hf._DISABLED = 2, 2, False
            res["bf16"] = (triton.testing.do_bench(lambda: flash_attn_func(qb, kb, vb, causal=causal)), 0.0)
            f = flops(b, s, h, d, causal)
            row = dict(tag=tag, d=d, s=s, causal=causal, **{n: [m, e] for n, (m, e) in res.items()})
            rows.append(row)
            print(f"{tag} D{d} S{s} {'causal' if causal else 'full'}: " +
                  " ".join(f"{n} {f / m / 1e9:.0f}T(err {e:.1e})" for n, (m, e) in res.items()) +
                  f" | best gluon fp8 / bf16 {res['bf16'][0] / min(res['gluon22'][0], res['gluon33'][0]):.3f}"
                  f" / portable fp8 {res['portable'][0] / min(res['gluon22'][0], res['gluon33'][0]):.3f}", flush=True)
json.dump(rows, open(os.path.join(OUT, f"s21d_{tag}.json"), "w"), indent=1)
