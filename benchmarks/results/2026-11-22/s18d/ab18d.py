"""Session 18: from which length the Gluon kernels should take head dim 64.  flash_attn_func with the dispatch
thresholds at the shipped values (portable below 4k) against thresholds at 0 (Gluon), and SDPA-cuDNN; timed as
`flashtron bench` does (triton do_bench: eager steps, L2 flushed) and by CUDA-graph replay; 3 interleaved rounds."""
import os, sys, statistics
import torch
import torch.nn.functional as F
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flashtron
from flashtron.kernels import hopper_backward, hopper_forward
from window_fit_lib import graph_ms
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
FWD0, BWD0 = dict(hopper_forward.MIN_SEQLEN), dict(hopper_backward.MIN_SEQLEN)

def set_gluon(fwd, bwd):
    hopper_forward.MIN_SEQLEN[64] = 0 if fwd else 1 << 30
    hopper_backward.MIN_SEQLEN[64] = 0 if bwd else 1 << 30

for S in (1024, 2048, 3072, 4096):
    for causal in (False, True):
        B, H, D = 16384 // S, 32, 64
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        dout = torch.randn_like(q)
        qt, kt, vt = (t.detach().transpose(1, 2) for t in (q, k, v))
        qg, kg, vg = (t.transpose(1, 2) for t in (q, k, v))
        def fwd(): 
            with torch.no_grad(): flashtron.flash_attn_func(q, k, v, causal=causal)
        def fb(): flashtron.flash_attn_func(q, k, v, causal=causal).backward(dout)
        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION), torch.no_grad():
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
        def cudnn_fb():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal).backward(dout.transpose(1, 2))
        variants = {"fwd portable": (fwd, (False, False)), "fwd gluon": (fwd, (True, False)), "fwd cudnn": (cudnn, None),
                    "fb portable": (fb, (False, False)), "fb gluon-fwd": (fb, (True, False)), "fb gluon": (fb, (True, True)),
                    "fb cudnn": (cudnn_fb, None)}
        t = {n: [] for n in variants}; g = {n: [] for n in variants if n.startswith("fwd")}
        for _ in range(3):
            for n, (f, mode) in variants.items():
                if mode: set_gluon(*mode)
                f()
                t[n].append(triton.testing.do_bench(f, grad_to_none=[q, k, v], return_mode="median"))
                if n in g: g[n].append(graph_ms(f))
        hopper_forward.MIN_SEQLEN.update(FWD0); hopper_backward.MIN_SEQLEN.update(BWD0)
        flops = 4 * B * H * S * S * D * (0.5 if causal else 1)
        cells = " ".join(f"{n} {flops * (3.5 if n.startswith('fb') else 1) / statistics.median(x) / 1e9:.0f}" for n, x in t.items())
        gcells = " ".join(f"{n} {flops / statistics.median(x) / 1e9:.0f}" for n, x in g.items())
        print(f"S={S} causal={causal} do_bench TF/s: {cells} | graph: {gcells}", flush=True)
