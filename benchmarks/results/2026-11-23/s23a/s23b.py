"""cProfile of the eager fwd+bwd step's host part (GPU kept busy so nothing waits)."""
import sys, cProfile, pstats, io, time, statistics
import torch
from flashtron import flash_attn_func
out_dir = sys.argv[1]
d, s = 128, 1024
b, h = 16384 // s, 2048 // d
q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
g = torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16)
def step():
    for t in (q, k, v): t.grad = None
    flash_attn_func(q, k, v, causal=True).backward(g)
def fwd_only():
    for t in (q, k, v): t.grad = None
    return flash_attn_func(q, k, v, causal=True)
for _ in range(5): step()
torch.cuda.synchronize()
# stamps: forward call alone, backward alone
torch.cuda._sleep(int(4e9))
tf, tb = [], []
for _ in range(40):
    for t in (q, k, v): t.grad = None
    t0 = time.perf_counter(); o = flash_attn_func(q, k, v, causal=True); t1 = time.perf_counter()
    o.backward(g); t2 = time.perf_counter()
    tf.append(t1 - t0); tb.append(t2 - t1)
torch.cuda.synchronize()
print(f"forward call {statistics.median(tf)*1e6:.0f} us, backward call {statistics.median(tb)*1e6:.0f} us")
torch.cuda._sleep(int(6e9))
pr = cProfile.Profile()
pr.enable()
for _ in range(100): step()
pr.disable()
torch.cuda.synchronize()
sio = io.StringIO()
st = pstats.Stats(pr, stream=sio); st.sort_stats("tottime").print_stats(45)
st.sort_stats("cumulative").print_stats(60)
open(f"{out_dir}/prof.txt", "w").write(sio.getvalue())
print(sio.getvalue()[:6000])
