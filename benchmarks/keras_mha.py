"""Issue 8's bar: a Keras MultiHeadAttention layer (torch backend, bf16, B=4, T=4096, 16 heads of 128,
causal), forward+backward, with keras.config.enable_flash_attention() alone vs flashtron.keras.enable().

    python benchmarks/keras_mha.py [--rounds 5] [--output FILE]   # needs a GPU and keras; prints JSON last

One layer with one set of weights, one process.  Rounds alternate Keras's own flash path (torch's
FlashAttention-2) and flashtron.keras.enable(), 3 warm-up and 20 timed steps each; the speed-up is the
ratio of the medians.  The outputs of the two paths are compared once.
"""
import argparse
import json
import os
import statistics

os.environ["KERAS_BACKEND"] = "torch"
import torch  # noqa: E402
import keras  # noqa: E402
import flashtron.keras as fk  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--output", help="append the JSON line to this file")
args = parser.parse_args()

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


def time_ms(fn, warm=3, iters=20):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / iters


def use(flashtron: bool):
    (fk.enable if flashtron else fk.disable)()


outputs = {}
for flashtron in (False, True):
    use(flashtron)
    outputs[flashtron] = step().detach().float()
times = {False: [], True: []}
for _ in range(args.rounds):
    for flashtron in (False, True):
        use(flashtron)
        times[flashtron].append(time_ms(step))
fk.disable()
keras_ms, flashtron_ms = statistics.median(times[False]), statistics.median(times[True])
results = {"device": torch.cuda.get_device_name(), "keras_flash_ms": round(keras_ms, 3),
           "flashtron_ms": round(flashtron_ms, 3), "speedup": round(keras_ms / flashtron_ms, 3),
           "keras_flash_rounds": [round(t, 3) for t in times[False]],
           "flashtron_rounds": [round(t, 3) for t in times[True]],
           "max_abs_diff": (outputs[True] - outputs[False]).abs().max().item(),
           "ref_scale": outputs[False].abs().max().item()}
line = json.dumps(results)
if args.output:
    with open(args.output, "a") as f:
        f.write(line + "\n")
print(line)
