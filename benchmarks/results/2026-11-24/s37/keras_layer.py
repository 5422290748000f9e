"""s37a: where a Keras MultiHeadAttention step goes (issue 8's bar), and what a fused layer path could reach.

Same layer, same weights, one process; variants interleaved over rounds:
  keras_flash   keras.config.enable_flash_attention() alone (torch's FlashAttention-2)
  ft_enable     flashtron.keras.enable() as shipped
  fused         prototype call: one addmm for q|k|v (weights concatenated per step), flashtron on the unbound
                views, one addmm out
  linear3       prototype call: three addmm, flashtron, one addmm
  fused_noattn  fused, attention replaced by v (projection cost)
and kernel-level figures: attention alone (flashtron, cuDNN, FA2), matmuls alone.
"""
import json, math, os, sys, time
os.environ["KERAS_BACKEND"] = "torch"
import torch
import torch.nn.functional as F
import keras
import flashtron
import flashtron.keras as fk

DEV = "cuda" if torch.cuda.is_available() else "cpu"
dev = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
keras.config.set_dtype_policy("bfloat16")
keras.config.enable_flash_attention()
torch.manual_seed(0)
B, T, N, H = (4, 4096, 16, 128) if DEV == "cuda" else (2, 37, 4, 16)
E = N * H
layer = keras.layers.MultiHeadAttention(num_heads=N, key_dim=H)
x = torch.randn(B, T, E, device=DEV, dtype=torch.bfloat16, requires_grad=True)
g = torch.randn_like(x)
layer(x, x, use_causal_mask=True)  # builds the sublayers
MHA = keras.layers.MultiHeadAttention
KERAS_CALL = MHA.call


def params(layer):
    d = [layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense]
    return [t for l in d for t in (l.kernel.value, l.bias.value)]


def fused_call(self, query, value, key=None, use_causal_mask=False, attention_stand_in=False, **kw):
    qd, kd, vd, od = self._query_dense, self._key_dense, self._value_dense, self._output_dense
    w = torch.cat([qd.kernel.value.view(E, E), kd.kernel.value.view(E, E), vd.kernel.value.view(E, E)], 1)
    b = torch.cat([qd.bias.value.view(E), kd.bias.value.view(E), vd.bias.value.view(E)])
    qkv = torch.addmm(b, query.reshape(-1, E), w).view(B, T, 3, N, H)
    q, k, v = qkv.unbind(2)
    if attention_stand_in:
        o = v
    else:
        o = flashtron.flash_attn_func(q, k, v, softmax_scale=1 / math.sqrt(H), causal=use_causal_mask)
    return torch.addmm(od.bias.value, o.reshape(-1, E), od.kernel.value.view(E, E)).view(B, T, E)


def linear3_call(self, query, value, key=None, use_causal_mask=False, **kw):
    qd, kd, vd, od = self._query_dense, self._key_dense, self._value_dense, self._output_dense
    x2 = query.reshape(-1, E)
    q, k, v = (torch.addmm(d.bias.value.view(E), x2, d.kernel.value.view(E, E)).view(B, T, N, H)
               for d in (qd, kd, vd))
    o = flashtron.flash_attn_func(q, k, v, softmax_scale=1 / math.sqrt(H), causal=use_causal_mask)
    return torch.addmm(od.bias.value, o.reshape(-1, E), od.kernel.value.view(E, E)).view(B, T, E)


def noattn_call(self, query, value, key=None, use_causal_mask=False, **kw):
    return fused_call(self, query, value, key, use_causal_mask, attention_stand_in=True)


from flashtron import ops


class FusedSelfAttention(torch.autograd.Function):
    """x (B*T, E) -> out (B*T, E): qkv projection, causal flashtron attention, output projection; backward by hand
    (no stack of dq|dk|dv, no separate adds for dx)."""

    @staticmethod
    def forward(ctx, x2, wq, wk, wv, bq, bk, bv, wo, bo):
        w = torch.cat([wq, wk, wv], 1)
        b = torch.cat([bq, bk, bv])
        qkv = torch.addmm(b, x2, w).view(B, T, 3, N, H)
        q, k, v = qkv.unbind(2)
        scale = 1 / math.sqrt(H)
        o, lse = ops._engine(q).forward(q, k, v, scale, -1, 0, 0.0, None, None, 0.0, None, False)
        ctx.save_for_backward(x2, wq, wk, wv, wo, q, k, v, o, lse)
        return torch.addmm(bo, o.view(-1, E), wo)

    @staticmethod
    def backward(ctx, g):
        x2, wq, wk, wv, wo, q, k, v, o, lse = ctx.saved_tensors
        do = torch.mm(g, wo.t())
        dwo = torch.mm(o.view(-1, E).t(), g)
        dbo = g.sum(0)
        dq, dk, dv, _, _ = ops._engine(q).backward(do.view(B, T, N, H), q, k, v, o, lse, 1 / math.sqrt(H), -1, 0, 0.0,
                                           None, None, 0.0, None, False)
        dq, dk, dv = (t.view(-1, E) for t in (dq, dk, dv))
        dx = torch.mm(dq, wq.t())
        dx.addmm_(dk, wk.t())
        dx.addmm_(dv, wv.t())
        xt = x2.t()
        return (dx, torch.mm(xt, dq), torch.mm(xt, dk), torch.mm(xt, dv), dq.sum(0), dk.sum(0), dv.sum(0),
                dwo, dbo)


def fused_fn_call(self, query, value, key=None, use_causal_mask=False, **kw):
    qd, kd, vd, od = self._query_dense, self._key_dense, self._value_dense, self._output_dense
    ws = [d.kernel.value.view(E, E) for d in (qd, kd, vd)]
    bs = [d.bias.value.view(E) for d in (qd, kd, vd)]
    return FusedSelfAttention.apply(query.reshape(-1, E), *ws, *bs, od.kernel.value.view(E, E),
                                    od.bias.value).view(B, T, E)


VARIANTS = {"fused_fn": (False, fused_fn_call), "keras_flash": (False, KERAS_CALL), "ft_enable": (True, KERAS_CALL), "fused": (False, fused_call),
            "linear3": (False, linear3_call), "fused_noattn": (False, noattn_call)}


def use(name):
    enabled, call = VARIANTS[name]
    (fk.enable if enabled else fk.disable)()
    MHA.call = call


def step():
    x.grad = None
    out = layer(x, x, use_causal_mask=True)
    out.backward(g)
    return out


def time_ms(fn, warm=3, iters=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    h0 = time.perf_counter()
    s.record()
    for _ in range(iters):
        fn()
    host = (time.perf_counter() - h0) / iters * 1e3
    e.record(); e.synchronize()
    return s.elapsed_time(e) / iters, host


# correctness against Keras's own path: out, x.grad and the weight grads
ref = {}
for name in VARIANTS:
    use(name)
    for p in params(layer):
        p.grad = None
    out = step()
    ref[name] = [out.detach().float()] + [x.grad.float()] + [p.grad.float() for p in params(layer)]
labels = ["out", "dx", "dWq", "dbq", "dWk", "dbk", "dWv", "dbv", "dWo", "dbo"]
for name in ("ft_enable", "fused", "linear3", "fused_fn"):
    diffs = {l: round((a - b).abs().max().item() / max(b.abs().max().item(), 1e-9), 5)
             for l, a, b in zip(labels, ref[name], ref["keras_flash"])}
    print(f"{name} rel max diff vs keras_flash: {diffs}", flush=True)

if DEV == "cpu":
    sys.exit(0)
rounds = {n: [] for n in VARIANTS}
for r in range(4):
    for name in VARIANTS:
        use(name)
        rounds[name].append(time_ms(step))
use("keras_flash")

from torch.profiler import profile, ProfilerActivity
for name in ("keras_flash", "fused", "fused_fn"):
    use(name)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    print(f"\n## profile {name} (5 steps)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
use("keras_flash")

# kernel level: attention alone (fwd+bwd), contiguous (B, T, N, H)
def attn_case(impl):
    q, k, v = (torch.randn(B, T, N, H, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(B, T, N, H, device=DEV, dtype=torch.bfloat16)
    def f():
        for t in (q, k, v):
            t.grad = None
        if impl == "flashtron":
            o = flashtron.flash_attn_func(q, k, v, causal=True)
        else:
            be = {"cudnn": torch.nn.attention.SDPBackend.CUDNN_ATTENTION,
                  "fa2": torch.nn.attention.SDPBackend.FLASH_ATTENTION}[impl]
            with torch.nn.attention.sdpa_kernel(backends=[be]):
                o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                   is_causal=True).transpose(1, 2)
        o.backward(do)
    return f

def mm_case(m, n, k):
    a = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(k, n, device=DEV, dtype=torch.bfloat16)
    return lambda: torch.mm(a, b)

kern = {}
for r in range(3):
    for impl in ("flashtron", "cudnn", "fa2"):
        kern.setdefault("attn_" + impl, []).append(time_ms(attn_case(impl))[0])
    for (m, n, k) in ((B * T, 3 * E, E), (B * T, E, E), (B * T, E, 3 * E), (E, 3 * E, B * T), (E, E, B * T)):
        kern.setdefault(f"mm_{m}x{n}x{k}", []).append(time_ms(mm_case(m, n, k), iters=20)[0])

print(f"\n{dev}  torch {torch.__version__}  keras {keras.__version__}")
print("| variant | ms per step (rounds) | host ms/step | vs keras_flash (median) |")
print("|---|---|---|---|")
med = lambda xs: sorted(xs)[len(xs) // 2]
base = med([t for t, _ in rounds["keras_flash"]])
for name, rs in rounds.items():
    m = med([t for t, _ in rs])
    print(f"| {name} | {' '.join(f'{t:.3f}' for t, _ in rs)} | {med([h for _, h in rs]):.2f} | {base / m:.3f}x |")
flops_attn = 4 * B * N * T * T * H / 2 * 3.5
for name, ts in kern.items():
    m = med(ts)
    if name.startswith("attn"):
        print(f"| {name} | {' '.join(f'{t:.3f}' for t in ts)} | | {flops_attn / m / 1e9:.0f} TFLOP/s |")
    else:
        mm, nn, kk = map(int, name[3:].split("x"))
        print(f"| {name} | {' '.join(f'{t:.3f}' for t in ts)} | | {2 * mm * nn * kk / m / 1e9:.0f} TFLOP/s |")
json.dump({"device": dev, "rounds": rounds, "kernels": kern}, open(os.path.join(os.environ.get("OUT", "."), "s37a.json"), "w"))
