"""Session 28 (f): the paged decoding kernel with MASK_FIRST (the run-time mask in a branch of its own, then the one
softmax body) against HEAD (flashtron_base) and the new code with it off (ctl), same process.  Per case: CUDA graph
of 20 calls, 10 replays, median; 5 rotated rounds, median of rounds.  bf16, H 32, Hk 8, D 128, page size 16, pages in
random order, one query token (issue 5's shapes); also causal with 4 new tokens."""
import os, sys, json
sys.path.insert(0, "experiments/base28")
import torch
import flashtron, flashtron_base
from flashtron import bench_decode
from flashtron.kernels import hopper_decode as hd
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2806)
gen = torch.Generator().manual_seed(6)


def graph_ms(fn, calls=20, reps=10):
    fn()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(); fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return sorted(times)[len(times) // 2]


def knob(fn, value):
    def run():
        old = hd.MASK_FIRST
        hd.MASK_FIRST = value
        try:
            return fn()
        finally:
            hd.MASK_FIRST = old
    return run


x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(200):
    x @ x
rows = []
for batch, seqlen, new_tokens in ((1, 131072, 1), (64, 4096, 1), (8, 16384, 4)):
    q = torch.randn(batch, new_tokens, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, seqlen, 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    seqlens = torch.full((batch,), seqlen, dtype=torch.int32, device="cuda")
    table = bench_decode.page_table(batch, seqlen, 16, gen, "cuda")
    kp, vp = bench_decode.to_pages(k, table, 16), bench_decode.to_pages(v, table, 16)
    kv_bytes = 2 * k.numel() * k.element_size()
    causal = new_tokens > 1

    def step(lib):
        return lambda: lib.flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=table, causal=causal)
    fns = {"base": step(flashtron_base), "ctl": knob(step(flashtron), False), "mf": knob(step(flashtron), True)}
    outs = {n: f().float() for n, f in fns.items()}
    diff = {n: float((outs[n] - outs["base"]).abs().max()) for n in fns}
    t = {n: [] for n in fns}
    names = list(fns)
    for r in range(5):
        for n in names[r % 3:] + names[:r % 3]:
            t[n].append(graph_ms(fns[n]))
    med = {n: sorted(v)[2] for n, v in t.items()}
    rows.append(dict(batch=batch, seqlen=seqlen, new_tokens=new_tokens, ms=med, all=t, diff=diff))
    print(f"B{batch} Sk{seqlen} new{new_tokens}: base {med['base'] * 1e3:.1f} us ({kv_bytes / med['base'] / 1e6:.0f} GB/s) | "
          f"ctl {med['base'] / med['ctl']:.3f}x | mf {med['base'] / med['mf']:.3f}x | diff {diff}", flush=True)
json.dump(rows, open(os.path.join(OUT, "s28f.json"), "w"), indent=1)
