"""Session 18: consumers skip the blocks their rows do not see (the tree) against base18c (e14a1ff); the tree also
with three consumers forced for every dense D = 64 call.  Bit-equality checks, then CUDA graphs, median of 5
interleaved rounds, SDPA-cuDNN in the same process."""
import importlib.util, os, sys, statistics
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flashtron.kernels import hopper_forward as shipped
from window_fit_lib import graph_ms
print(torch.cuda.get_device_name(), torch.__version__, flush=True)

def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m
base = load("experiments/base18c/flashtron/kernels/hopper_forward.py", "base")
c3 = load("flashtron/kernels/hopper_forward.py", "c3")
c3.consumer_count = lambda head_dim, wl, wr, varlen, seqlen: 3 if head_dim == 64 and varlen is None else 2
fwd = {"shipped": base, "skip": shipped, "skip3": c3}
torch.manual_seed(0)
for D in (64, 128):
    for B, Sq, Sk, H, Hk, wl, wr in [(2, 1000, 1000, 3, 3, -1, 0), (1, 333, 777, 4, 2, -1, 0), (3, 777, 333, 4, 1, -1, 0),
                                     (1, 4099, 4099, 2, 1, -1, 0), (2, 1000, 1000, 2, 2, 50, 20), (2, 1000, 1000, 3, 3, -1, -1),
                                     (2, 1000, 1000, 2, 2, -1, 30), (1, 193, 193, 2, 2, -1, 0), (1, 8200, 8200, 2, 1, -1, 0),
                                     (1, 1000, 3000, 2, 2, -1, 0), (2, 1000, 1000, 2, 2, 300, 0), (2, 700, 500, 2, 1, 100, 64)]:
        for dt in (torch.bfloat16, torch.float16):
            q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt)
            k, v = (torch.randn(B, Sk, Hk, D, device="cuda", dtype=dt) for _ in range(2))
            outs = {}
            for n, m in fwd.items():
                o = torch.full_like(q, float("nan")); l = torch.full((B, H, Sq), float("nan"), device="cuda")
                m.forward(q, k, v, o, l, D ** -0.5, wl, wr)
                outs[n] = (o, l)
            same = all(torch.equal(outs["shipped"][i], outs[n][i]) for n in outs for i in (0, 1))
            print(f"check D={D} B={B} Sq={Sq} Sk={Sk} H={H}/{Hk} w=({wl},{wr}) {str(dt)[6:]}: equal {same}", flush=True)
            assert same

for D, S, wl, wr in [(64, 16384, -1, 0), (64, 8192, -1, 0), (64, 4096, -1, 0), (64, 2048, -1, 0), (64, 1024, -1, 0),
                     (128, 16384, -1, 0), (128, 4096, -1, 0), (128, 1024, -1, 0), (64, 16384, 1024, 0), (64, 4096, 1024, 0),
                     (128, 16384, 1024, 0)]:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    o = torch.empty_like(q); l = torch.empty(B, H, S, device="cuda")
    fns = {n: (lambda m=m: m.forward(q, k, v, o, l, D ** -0.5, wl, wr)) for n, m in fwd.items()}
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=wr == 0)
    if wl < 0:
        fns["cudnn"] = cudnn
    t = {n: [] for n in fns}
    for _ in range(5):
        for n, f in fns.items():
            t[n].append(graph_ms(f))
    m = {n: statistics.median(x) for n, x in t.items()}
    flops = 4 * B * H * S * S * D * (0.5 if wr == 0 else 1) if wl < 0 else 4 * B * H * S * (wl + 1) * D
    cells = " ".join(f"{n} {flops / m[n] / 1e9:.0f}" for n in m)
    rel = " ".join(f"{n}/shipped {m['shipped'] / m[n]:.3f}x" for n in m if n != "shipped")
    print(f"D={D} S={S:5d} w=({wl},{wr}) TF/s: {cells} | {rel}", flush=True)
