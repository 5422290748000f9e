"""Run one small backward per case with the flashtron on sys.path (a variant), compare with flashtron_base."""
import sys
sys.path.insert(0, "experiments/base24")
import torch, flashtron, flashtron_base
torch.manual_seed(0)
for D, mask in [(128, "causal"), (128, "window"), (64, "none"), (128, "none")]:
    q, k, v = (torch.randn(2, 1100, 4, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (300, 0)
    g = torch.autograd.grad(flashtron.flash_attn_func(q, k, v, **kw), (q, k, v), dout)
    torch.cuda.synchronize()
    b = torch.autograd.grad(flashtron_base.flash_attn_func(q, k, v, **kw), (q, k, v), dout)
    rel = [((x.float() - y.float()).abs().max() / y.float().abs().max()).item() for x, y in zip(g, b)]
    print(D, mask, "rel diff dq dk dv", ["%.2e" % r for r in rel], flush=True)
