"""Session 18: variable-length batches at D = 64 (64 sequences, 128 tokens to the longest, H 32), forward+backward as
shipped (portable forward, Gluon backward from 1k causal / 2k full) against the old rule (both portable below 4k),
triton do_bench as `flashtron bench` times, 3 interleaved rounds."""
import os, sys, statistics
import torch
import triton.testing
import flashtron
from flashtron.kernels import hopper_backward
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
NEW = dict(hopper_backward.MIN_SEQLEN)
OLD = dict(NEW); OLD[64, False] = (2048, 4096); OLD[64, True] = (4096, 4096)
g = torch.Generator().manual_seed(0)
for max_len in (1024, 2048, 3072):
    lens = torch.randint(128, max_len + 1, (64,), generator=g)
    cu = torch.zeros(65, dtype=torch.int32); cu[1:] = lens.cumsum(0); cu = cu.cuda()
    T, H, D, mx = int(lens.sum()), 32, 64, int(lens.max())
    for causal in (False, True):
        q, k, v = (torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        dout = torch.randn_like(q)
        def fb(): flashtron.flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=causal).backward(dout)
        t = {"old": [], "new": []}
        for _ in range(3):
            for n, table in (("old", OLD), ("new", NEW)):
                hopper_backward.MIN_SEQLEN.update(table); fb()
                t[n].append(triton.testing.do_bench(fb, grad_to_none=[q, k, v], return_mode="median"))
        hopper_backward.MIN_SEQLEN.update(NEW)
        m = {n: statistics.median(x) for n, x in t.items()}
        print(f"varlen D=64 max_len={max_len} causal={causal}: fwd+bwd old {m['old']:.3f} ms new {m['new']:.3f} ms "
              f"(new/old speed {m['old'] / m['new']:.3f}x)", flush=True)
