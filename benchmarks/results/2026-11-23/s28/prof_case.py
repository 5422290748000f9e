"""One call shape, run a few times, for ncu: python prof_case.py D S causal(0/1/w) mode(fwd|bwd) [fp8]"""
import sys, torch
import flashtron
D, S, causal, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
fp8 = len(sys.argv) > 5
H = 2048 // D
B = max(16384 // S, 1)
torch.manual_seed(0)
q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
kw = dict(causal=causal == "1")
if causal == "w":
    kw = dict(causal=True, window_size=(1024, 0))
if fp8:
    q, k, v = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
    one = torch.ones(B, H, device="cuda")
    kw.update(q_descale=one, k_descale=one, v_descale=one)
if mode == "bwd":
    for t in (q, k, v):
        t.requires_grad_(True)
for _ in range(3):
    out = flashtron.flash_attn_func(q, k, v, **kw)
    if mode == "bwd":
        out.backward(torch.randn_like(out))
torch.cuda.synchronize()
print("done", D, S, causal, mode, fp8)
