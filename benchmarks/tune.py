"""Sweep launch configurations of the Triton kernels on the GPU at hand.

For each (head dim, causal) and each candidate config of one kernel, checks the
result against torch SDPA and times it with triton.testing.do_bench (median).
Prints a table per kernel and writes all figures to --out/tune.json.  The
winners go into flashtron/kernels/configs.py by hand, with the run recorded in
BENCHMARKS.md.

    python benchmarks/tune.py --out /tmp/tune --headdims 64,128 --seqlen 4096
"""

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from flashtron.kernels import configs, launch
from flashtron.kernels.configs import KernelConfig

FORWARD_CANDIDATES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2),
                      (64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 8, 4), (64, 128, 4, 3)]
DKDV_CANDIDATES = [(64, 128, 8, 2), (32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3),
                   (32, 64, 4, 3), (128, 128, 8, 2), (32, 128, 8, 3)]
DQ_CANDIDATES = [(128, 64, 8, 2), (128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3),
                 (64, 128, 8, 2), (128, 128, 8, 2)]


def _inputs(batch, seqlen, heads, head_dim, dtype):
    make = lambda: torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=dtype)
    return make(), make(), make(), make()


def _flops(batch, seqlen, heads, head_dim, causal):
    return 4 * batch * seqlen * seqlen * heads * head_dim / (2 if causal else 1)


def _reference(q, k, v, do, causal, window):
    qt, kt, vt = (t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v))
    if window is None:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    else:
        distance = torch.arange(k.shape[1], device="cuda")[None, :] - torch.arange(q.shape[1], device="cuda")[:, None]
        band = (distance >= -window[0]) & (distance <= window[1])
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=band)
    out.backward(do.transpose(1, 2))
    return out.transpose(1, 2), qt.grad.transpose(1, 2), kt.grad.transpose(1, 2), vt.grad.transpose(1, 2)


def _try(fn):
    try:
        return fn()
    except Exception as error:  # a config that does not compile is a result, not a crash
        return f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "tune-out"))
    parser.add_argument("--headdims", default="64,128,256")
    parser.add_argument("--seqlen", type=int, default=4096)
    parser.add_argument("--kernels", default="forward,dkdv,dq")
    parser.add_argument("--window", default=None,
                        help="L,R: sweep a sliding window instead of full/causal (FLOPs counted as causal)")
    parser.add_argument("--configs", default=None,
                        help="candidates to sweep instead of the built-in lists: m,n,warps,stages;m,n,warps,stages;...")
    parser.add_argument("--tma", default="off", choices=("off", "on", "both"),
                        help="candidates with TMA tiles off, on, or each both ways")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dtype = torch.bfloat16
    window_arg = None if args.window is None else tuple(int(w) for w in args.window.split(","))
    results = []
    for head_dim in [int(d) for d in args.headdims.split(",")]:
        heads, batch = 2048 // head_dim, 16384 // args.seqlen
        for causal in (False, True) if window_arg is None else (True,):
            q, k, v, do = _inputs(batch, args.seqlen, heads, head_dim, dtype)
            ref_out, ref_dq, ref_dk, ref_dv = _reference(q, k, v, do, causal, window_arg)
            scale = head_dim ** -0.5
            window = window_arg or (-1, 0 if causal else -1)
            variants = (0.0, None, None, 0.0, None)  # softcap, alibi_slopes, sinks, dropout_p, dropout_seed
            flops = _flops(batch, args.seqlen, heads, head_dim, causal)
            sdpa_ms = do_bench(lambda: F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal), return_mode="median")
            results.append(dict(kernel="sdpa-default-fwd", head_dim=head_dim, causal=causal, config=None,
                                ms=sdpa_ms, tflops=flops / sdpa_ms * 1e-9))
            out, lse = launch.forward(q, k, v, scale, *window, *variants, False)
            for kernel in args.kernels.split(","):
                candidates = {"forward": FORWARD_CANDIDATES, "dkdv": DKDV_CANDIDATES, "dq": DQ_CANDIDATES}[kernel]
                if args.configs:
                    candidates = [tuple(int(x) for x in c.split(",")) for c in args.configs.split(";")]
                tma_modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.tma]
                for cand in [(*c, t) for c in candidates for t in tma_modes]:
                    if head_dim == 256 and cand[0] * cand[1] > 64 * 128 and not args.configs:
                        continue
                    cfg = KernelConfig(*cand)
                    with configs.override(**{kernel: cfg}):
                        if kernel == "forward":
                            run = lambda: launch.forward(q, k, v, scale, *window, *variants, False)
                            check = lambda: (run()[0] - ref_out).abs().max().item()
                            work = flops
                        else:
                            run = lambda: launch.backward(do, q, k, v, out, lse, scale, *window, *variants, False)[:3]
                            check = lambda: max((a - b).abs().max().item()
                                                for a, b in zip(run(), (ref_dq, ref_dk, ref_dv)))
                            work = 2.5 * flops
                        started = time.time()
                        error = _try(check)
                        ms = _try(lambda: do_bench(run, warmup=25, rep=100, return_mode="median")) \
                            if isinstance(error, float) else None
                    row = dict(kernel=kernel, head_dim=head_dim, causal=causal, config=cand, max_error=error,
                               ms=ms, tflops=work / ms * 1e-9 if isinstance(ms, float) else None,
                               seconds=round(time.time() - started, 1))
                    results.append(row)
                    print(json.dumps(row), flush=True)
            del q, k, v, do
            torch.cuda.empty_cache()
    with open(os.path.join(args.out, "tune.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                       date=time.strftime("%Y-%m-%d"), seqlen=args.seqlen, results=results), f, indent=1)
    print(f"\n{'kernel':8} {'D':>4} {'causal':>6} {'config':>26} {'TFLOP/s':>8} {'err':>9}")
    for row in results:
        tf = f"{row['tflops']:.0f}" if row.get("tflops") else "-"
        err = row.get("max_error")
        err = f"{err:.2e}" if isinstance(err, float) else str(err)[:30] if err is not None else ""
        print(f"{row['kernel'][:8]:8} {row['head_dim']:>4} {str(row['causal']):>6} {str(row['config']):>26} "
              f"{tf:>8} {err:>9}")


if __name__ == "__main__":
    main()
