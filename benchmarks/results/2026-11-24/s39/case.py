"""One fwd+bwd shape, run a few times, for profilers: python case.py impl(ours|cudnn) D S causal(0/1)"""
import sys, torch
import os
import flashtron
from flashtron.kernels import hopper_backward as hb
if os.environ.get('SPLIT'):
    hb.DQ_BY_KEYS[64] = False
from torch.nn.attention import SDPBackend, sdpa_kernel
impl, D, S, causal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
H, B = 2048 // D, max(16384 // S, 1)
torch.manual_seed(0)
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
g = torch.randn_like(q); gt = g.transpose(1, 2).contiguous()
def step():
    if impl == "cudnn":
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(gt)
    else:
        flashtron.flash_attn_func(q, k, v, causal=causal).backward(g)
for _ in range(3):
    step()
torch.cuda.synchronize()
if len(sys.argv) > 5:  # kernel table from torch's profiler
    from torch.profiler import profile, ProfilerActivity
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    print(f"== {impl} D {D} S {S} causal {causal}")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=110))
print("done", impl, D, S, causal)
