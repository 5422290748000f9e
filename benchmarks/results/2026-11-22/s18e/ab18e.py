"""Session 18: head dim 64 variable-length batches (64 sequences of 128-2048 tokens, H 32): the Gluon kernels
against the portable ones (dispatch thresholds toggled), forward and forward+backward, triton do_bench as
`flashtron bench` times, 3 interleaved rounds."""
import os, sys, statistics
import torch
import triton.testing
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashtron
from flashtron.kernels import hopper_backward, hopper_forward
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
FWD0, BWD0 = dict(hopper_forward.MIN_SEQLEN), dict(hopper_backward.MIN_SEQLEN)

def set_gluon(fwd, bwd):
    hopper_forward.MIN_SEQLEN[64] = 0 if fwd else 1 << 30
    x = 0 if bwd else 1 << 30
    hopper_backward.MIN_SEQLEN[64] = (x, x) if isinstance(BWD0[64], tuple) else x

g = torch.Generator().manual_seed(0)
for max_len in (1024, 2048, 3072):
    lens = torch.randint(128, max_len + 1, (64,), generator=g)
    cu = torch.zeros(65, dtype=torch.int32); cu[1:] = lens.cumsum(0); cu = cu.cuda()
    T, H, D = int(lens.sum()), 32, 64
    for causal in (False, True):
        q, k, v = (torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        dout = torch.randn_like(q)
        mx = int(lens.max())
        def fwd():
            with torch.no_grad(): flashtron.flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=causal)
        def fb(): flashtron.flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=causal).backward(dout)
        variants = {"fwd portable": (fwd, (False, False)), "fwd gluon": (fwd, (True, False)),
                    "fb portable": (fb, (False, False)), "fb gluon-fwd": (fb, (True, False)), "fb gluon": (fb, (True, True))}
        t = {n: [] for n in variants}
        for _ in range(3):
            for n, (f, mode) in variants.items():
                set_gluon(*mode); f()
                t[n].append(triton.testing.do_bench(f, grad_to_none=[q, k, v], return_mode="median"))
        hopper_forward.MIN_SEQLEN.update(FWD0); hopper_backward.MIN_SEQLEN.update(BWD0)
        m = {n: statistics.median(x) for n, x in t.items()}
        print(f"varlen max_len={max_len} causal={causal} ms: " + " ".join(f"{n} {x:.3f}" for n, x in m.items())
              + f" | fwd gluon/portable {m['fwd portable'] / m['fwd gluon']:.3f}x, bwd gluon/portable "
              f"{m['fb gluon-fwd'] / m['fb gluon']:.3f}x", flush=True)
