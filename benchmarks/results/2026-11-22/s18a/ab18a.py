"""Session 18: the Gluon forward with part of the softmax's exp2 on the FMA pipes (experiments/make_hf18.py).
Checks each variant's output against a float64 reference (error relative to the shipped kernel's), then times
all variants and SDPA-cuDNN in one process: CUDA graphs, median of 5 interleaved rounds."""
import importlib, os, sys, statistics
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "var18"))
from flashtron.kernels import hopper_forward as shipped
from window_fit_lib import graph_ms
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
names = sys.argv[1].split(",") if len(sys.argv) > 1 else ["mufu", "e1d3", "e1d4", "e2d3", "e4d3", "mul"]
mods = {"shipped": shipped}
mods.update({n: importlib.import_module("hf_" + n) for n in names})
torch.manual_seed(0)

def reference(q, k, v, scale, wl, wr):
    B, S, H, D = q.shape
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    s = qd @ kd.transpose(-1, -2) * scale
    i = torch.arange(S, device=q.device)[:, None]; j = torch.arange(S, device=q.device)[None, :]
    keep = torch.ones(S, S, dtype=torch.bool, device=q.device)
    if wl >= 0: keep &= j >= i - wl
    if wr >= 0: keep &= j <= i + wr
    s = s.masked_fill(~keep, float("-inf"))
    return (torch.softmax(s, -1) @ vd).transpose(1, 2), torch.logsumexp(s, -1)

# correctness on odd shapes (B=2, S=1000 / 333, H=3)
for D in (64, 128):
    for S, wl, wr in [(1000, -1, -1), (1000, -1, 0), (333, 100, 0), (1000, 50, 20)]:
        for dt in (torch.bfloat16, torch.float16):
            q, k, v = (torch.randn(2, S, 3, D, device="cuda", dtype=dt) for _ in range(3))
            ro, rl = reference(q, k, v, D ** -0.5, wl, wr)
            errs = {}
            for n, m in mods.items():
                o = torch.full_like(q, float("nan")); l = torch.full((2, 3, S), float("nan"), device="cuda")
                m.forward(q, k, v, o, l, D ** -0.5, wl, wr)
                errs[n] = ((o.double() - ro).abs().max().item(), (l.double() - rl).abs().max().item())
            line = " ".join(f"{n} {e[0]:.2e}/{e[1]:.1e}" for n, e in errs.items())
            print(f"check D={D} S={S} w=({wl},{wr}) {str(dt)[6:]}: {line}", flush=True)

rows = []
for D, S, wl, wr in [(64, 16384, -1, -1), (64, 16384, -1, 0), (64, 4096, -1, -1), (64, 4096, -1, 0),
                     (128, 16384, -1, -1), (128, 16384, -1, 0), (128, 4096, -1, 0), (128, 16384, 1024, 0)]:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    o = torch.empty_like(q); l = torch.empty(B, H, S, device="cuda")
    fns = {n: (lambda m=m: m.forward(q, k, v, o, l, D ** -0.5, wl, wr)) for n, m in mods.items()}
    if wl < 0:
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                F.scaled_dot_product_attention(qt, kt, vt, is_causal=wr == 0)
        fns["cudnn"] = cudnn
    t = {n: [] for n in fns}
    for _ in range(5):
        for n, f in fns.items():
            t[n].append(graph_ms(f))
    m = {n: statistics.median(x) for n, x in t.items()}
    flops = 4 * B * H * S * S * D * (0.5 if wr == 0 and wl < 0 else 1)
    if wl >= 0: flops = 4 * B * H * S * (wl + 1) * D
    cells = " ".join(f"{n} {flops / m[n] / 1e9:.0f}" for n in m)
    rel = " ".join(f"{n} {m['shipped'] / m[n]:.3f}x" for n in m if n != "shipped")
    print(f"D={D} S={S:5d} w=({wl},{wr}) TF/s: {cells} | over shipped: {rel}", flush=True)
