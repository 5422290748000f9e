"""Session 21 (a): the Gluon forward at D = 256 (output through Q's tiles) and in FP8 (keys-innermost V), against
the portable kernel and cuDNN, in one process.  Forward only, bench shapes (B*S = 16k, H*D = 2048)."""
import sys, json, os
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend
import triton
from flashtron import flash_attn_func
from flashtron.kernels import hopper_forward as hf

torch.manual_seed(0)
OUT = os.environ.get("OUT", ".")
rows = []


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100)


def flops(b, s, h, d, causal):
    return 4.0 * b * s * s * h * d * (0.5 if causal else 1.0)


def with_config(k_stages, v_stages, disabled=False):
    hf.K_STAGES, hf.V_STAGES, hf._DISABLED = k_stages, v_stages, disabled


def run_d256(seqlens):
    d, h = 256, 8
    for s in seqlens:
        b = 16384 // s
        q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            f = flops(b, s, h, d, causal)
            res = {}
            with_config(2, 2, True)
            ref = flash_attn_func(q, k, v, causal=causal)
            for name, ks, vs, dis in (("portable", 2, 2, True), ("gluon22", 2, 2, False), ("gluon32", 3, 2, False)):
                with_config(ks, vs, dis)
                try:
                    out = flash_attn_func(q, k, v, causal=causal)
                    err = (out.float() - ref.float()).abs().max().item()
                    ms = bench(lambda: flash_attn_func(q, k, v, causal=causal))
                    res[name] = (ms, err)
                except Exception as e:  # noqa
                    res[name] = (float("nan"), repr(e)[:200])
            with_config(2, 2, False)
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                ms = bench(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
            res["cudnn"] = (ms, 0.0)
            row = {"case": f"D256 S{s} {'causal' if causal else 'full'}", **{n: [m, e] for n, (m, e) in res.items()}}
            rows.append(row)
            print(row["case"], " ".join(f"{n}={m:.3f}ms({f / m / 1e9:.0f}T,err={e if isinstance(e, str) else f'{e:.1e}'})"
                                        for n, (m, e) in res.items()), flush=True)


def run_fp8(d, seqlens):
    h = 2048 // d
    for s in seqlens:
        b = 16384 // s
        qb, kb, vb = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (qb, kb, vb))
        ds = [torch.rand(b, h, device="cuda") + 0.5 for _ in range(3)]
        for causal in (False, True):
            f = flops(b, s, h, d, causal)
            res = {}
            call = lambda: flash_attn_func(q8, k8, v8, causal=causal, q_descale=ds[0], k_descale=ds[1], v_descale=ds[2])
            with_config(2, 2, True)
            ref = call()
            for name, ks, vs, dis in (("fp8portable", 2, 2, True), ("fp8gluon22", 2, 2, False),
                                      ("fp8gluon33", 3, 3, False), ("fp8gluon43", 4, 3, False)):
                with_config(ks, vs, dis)
                try:
                    out = call()
                    err = (out.float() - ref.float()).abs().max().item()
                    ms = bench(call)
                    res[name] = (ms, err)
                except Exception as e:  # noqa
                    res[name] = (float("nan"), repr(e)[:200])
            with_config(2, 2, False)
            res["bf16gluon"] = (bench(lambda: flash_attn_func(qb, kb, vb, causal=causal)), 0.0)
            row = {"case": f"FP8 D{d} S{s} {'causal' if causal else 'full'}", **{n: [m, e] for n, (m, e) in res.items()}}
            rows.append(row)
            print(row["case"], " ".join(f"{n}={m:.3f}ms({f / m / 1e9:.0f}T,err={e if isinstance(e, str) else f'{e:.1e}'})"
                                        for n, (m, e) in res.items()),
                  f"fp8/bf16={res['bf16gluon'][0] / res['fp8gluon22'][0]:.3f}", flush=True)


which = sys.argv[1:] or ["d256", "fp8"]
seqlens = [1024, 2048, 4096, 8192, 16384]
print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
if "fp8" in which:
    run_fp8(128, seqlens)
    run_fp8(64, [1024, 4096, 16384])
if "d256" in which:
    run_d256(seqlens)
json.dump(rows, open(os.path.join(OUT, "s21a.json"), "w"), indent=1)
