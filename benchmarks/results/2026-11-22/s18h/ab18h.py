"""Session 18: the causal mask with one bound per row and three consumers for long causal calls at D = 64 (the tree)
against base18b (e9a46ab).  Outputs must be equal bit for bit (each row's blocks are visited in the same order); then CUDA
graphs, median of 5 interleaved rounds, with SDPA-cuDNN in the same process."""
import importlib.util, os, sys, statistics
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flashtron.kernels import hopper_forward as hf_new
from window_fit_lib import graph_ms
print(torch.cuda.get_device_name(), torch.__version__, flush=True)

def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m
fwd = {"base": load("experiments/base18b/flashtron/kernels/hopper_forward.py", "base_f"), "new": hf_new}
torch.manual_seed(0)
# bitwise equality on odd shapes, every mask kind, GQA, both dtypes, varlen
for D in (64, 128):
    for B, Sq, Sk, H, Hk, wl, wr in [(2, 1000, 1000, 3, 3, -1, -1), (2, 1000, 1000, 3, 3, -1, 0), (1, 333, 777, 4, 2, -1, 0),
                                     (3, 777, 333, 4, 1, -1, 0), (2, 1000, 1000, 2, 2, 100, 0), (2, 1000, 1000, 2, 2, 50, 20),
                                     (1, 4099, 4099, 2, 1, -1, 0), (1, 193, 193, 2, 2, -1, -1),
                                     (1, 8200, 8200, 2, 1, -1, 0), (1, 3000, 9000, 2, 2, -1, 0)]:
        for dt in (torch.bfloat16, torch.float16):
            q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt)
            k, v = (torch.randn(B, Sk, Hk, D, device="cuda", dtype=dt) for _ in range(2))
            outs = {}
            for n, m in fwd.items():
                o = torch.full_like(q, float("nan")); l = torch.full((B, H, Sq), float("nan"), device="cuda")
                m.forward(q, k, v, o, l, D ** -0.5, wl, wr)
                outs[n] = (o, l)
            same = torch.equal(outs["base"][0], outs["new"][0]) and torch.equal(outs["base"][1], outs["new"][1])
            finite = bool(outs["new"][0].isfinite().all())
            print(f"check D={D} B={B} Sq={Sq} Sk={Sk} H={H}/{Hk} w=({wl},{wr}) {str(dt)[6:]}: equal {same} finite {finite}", flush=True)
            assert same and finite
    # varlen: lengths 1, 200, 1000, 63 packed
    lens = torch.tensor([1, 200, 1000, 63], device="cuda")
    cu = torch.zeros(5, dtype=torch.int32, device="cuda"); cu[1:] = lens.cumsum(0)
    T = int(lens.sum())
    for wl, wr in [(-1, -1), (-1, 0), (64, 0)]:
        q, k, v = (torch.randn(1, T, 4, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        outs = {}
        for n, m in fwd.items():
            o = torch.full_like(q, float("nan")); l = torch.full((4, T), float("nan"), device="cuda")
            m.forward(q, k, v, o, l, D ** -0.5, wl, wr, (cu, cu, 1000, 1000))
            outs[n] = (o, l)
        same = torch.equal(outs["base"][0], outs["new"][0]) and torch.equal(outs["base"][1], outs["new"][1])
        print(f"check varlen D={D} w=({wl},{wr}): equal {same}", flush=True)
        assert same

for D, S, wl, wr in [(64, 16384, -1, 0), (64, 8192, -1, 0), (64, 4096, -1, 0), (128, 16384, -1, 0), (128, 8192, -1, 0),
                     (128, 4096, -1, 0), (128, 2048, -1, 0), (128, 1024, -1, 0), (64, 16384, -1, -1), (128, 16384, -1, -1)]:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    o = torch.empty_like(q); l = torch.empty(B, H, S, device="cuda")
    fns = {n: (lambda m=m: m.forward(q, k, v, o, l, D ** -0.5, wl, wr)) for n, m in fwd.items()}
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
    rel = f"new/base {m['base'] / m['new']:.3f}x" + (f" new/cudnn {m['cudnn'] / m['new']:.3f}x base/cudnn {m['cudnn'] / m['base']:.3f}x" if "cudnn" in m else "")
    print(f"D={D} S={S:5d} w=({wl},{wr}) TF/s: {cells} | {rel}", flush=True)
