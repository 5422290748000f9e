"""Session 21 (g): FP8 variable-length batches on the Gluon forward (v's copy aligned per sequence) against the
portable FP8 kernel; 64 sequences from 128 tokens to the longest, H = 16, Hk = 16 or 4, D = 128, interleaved."""
import os, json
import torch
import triton
from flashtron import flash_attn_varlen_func
from flashtron.kernels import hopper_forward as hf

OUT = os.environ.get("OUT", ".")
torch.manual_seed(0)
rows = []
print(torch.cuda.get_device_name())
for longest in (1024, 4096, 8192):
    lengths = torch.randint(128, longest + 1, (64,))
    lengths[0] = longest
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32).cuda()
    total = int(lengths.sum())
    for heads_kv in (16, 4):
        q = (torch.randn(total, 16, 128, device="cuda") * 2).to(torch.float8_e4m3fn)
        k, v = ((torch.randn(total, heads_kv, 128, device="cuda") * 2).to(torch.float8_e4m3fn) for _ in range(2))
        ds = [torch.rand(64, heads_kv, device="cuda") + 0.5 for _ in range(3)]
        for causal in (False, True):
            call = lambda: flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=causal, q_descale=ds[0],
                                                  k_descale=ds[1], v_descale=ds[2])
            times, outs = {"portable": [], "gluon": []}, {}
            for _ in range(3):
                for name in times:
                    hf._DISABLED = name == "portable"
                    outs[name] = call()
                    times[name].append(triton.testing.do_bench(call, warmup=25, rep=100))
            hf._DISABLED = False
            err = (outs["gluon"].float() - outs["portable"].float()).abs().max().item()
            best = {n: min(t) for n, t in times.items()}
            rows.append(dict(longest=longest, heads_kv=heads_kv, causal=causal, err=err, **best))
            print(f"longest {longest} Hk {heads_kv} {'causal' if causal else 'full'}: portable {best['portable']:.3f} "
                  f"gluon {best['gluon']:.3f} ms, speed-up {best['portable'] / best['gluon']:.3f}, max dev {err:.1e}",
                  flush=True)
json.dump(rows, open(os.path.join(OUT, "s21g.json"), "w"), indent=1)
