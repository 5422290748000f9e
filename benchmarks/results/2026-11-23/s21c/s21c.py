"""Session 21 (c): D = 256 variable-length batches, Gluon forward (MIN_SEQLEN varlen 0) against forward.py, forward
only; 64 sequences of random lengths from 128 to the longest, H = 8 (GQA 8/2 too), bf16; interleaved rounds."""
import os, json
import torch
import triton
from flashtron import flash_attn_varlen_func
from flashtron.kernels import hopper_forward as hf

OUT = os.environ.get("OUT", ".")
torch.manual_seed(0)
rows = []
print(torch.cuda.get_device_name())
for longest in (1024, 2048, 3072, 4096, 8192):
    lengths = torch.randint(128, longest + 1, (64,))
    lengths[0] = longest
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32).cuda()
    total = int(lengths.sum())
    for heads_kv in (8, 2):
        q = torch.randn(total, 8, 256, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(total, heads_kv, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for causal in (False, True):
            call = lambda: flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=causal)
            times = {"portable": [], "gluon": []}
            outs = {}
            for _ in range(3):
                for name in times:
                    hf.MIN_SEQLEN[256] = (0, None if name == "portable" else 0)
                    outs[name] = call()
                    times[name].append(triton.testing.do_bench(call, warmup=25, rep=100))
            err = (outs["gluon"].float() - outs["portable"].float()).abs().max().item()
            best = {n: min(t) for n, t in times.items()}
            rows.append(dict(longest=longest, heads_kv=heads_kv, causal=causal, err=err, **best))
            print(f"longest {longest} Hk {heads_kv} {'causal' if causal else 'full'}: portable {best['portable']:.3f} "
                  f"gluon {best['gluon']:.3f} ms, gluon/portable speed {best['portable'] / best['gluon']:.3f}, "
                  f"max dev {err:.1e}", flush=True)
hf.MIN_SEQLEN[256] = (0, None)
json.dump(rows, open(os.path.join(OUT, "s21c.json"), "w"), indent=1)
