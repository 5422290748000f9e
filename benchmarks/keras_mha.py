"""Issue 8's bar: a Keras MultiHeadAttention layer (torch backend, bf16, B=4, T=4096, 16 heads of 128,
causal), forward+backward, with keras.config.enable_flash_attention() alone vs flashtron.keras.enable().

    python benchmarks/keras_mha.py        # needs a GPU and keras; prints one JSON line

The same layer (same weights) is timed first with Keras's own flash path, then after
flashtron.keras.enable(); both outputs are compared.
"""
import json
import os
os.environ["KERAS_BACKEND"] = "torch"
import torch
import keras
import flashtron.keras as fk

keras.config.set_dtype_policy("bfloat16")
keras.config.enable_flash_attention()
torch.manual_seed(0)
B, T, N, H = 4, 4096, 16, 128
layer = keras.layers.MultiHeadAttention(num_heads=N, key_dim=H)
x = torch.randn(B, T, N * H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
g = torch.randn_like(x)

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
    s.record()
    for _ in range(iters):
        fn()
    e.record(); e.synchronize()
    return s.elapsed_time(e) / iters

results = {}
try:
    ref = step().detach().float()
    results["keras_flash_ms"] = time_ms(step)
except Exception as exc:
    results["keras_flash_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    ref = None
print("keras alone:", results, flush=True)
fk.enable()
out = step().detach().float()
results["flashtron_ms"] = time_ms(step)
if ref is not None:
    results["max_abs_diff"] = (out - ref).abs().max().item()
    results["ref_scale"] = ref.abs().max().item()
    results["speedup"] = results["keras_flash_ms"] / results["flashtron_ms"]
print(json.dumps(results))
