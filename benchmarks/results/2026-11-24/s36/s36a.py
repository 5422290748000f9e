"""Issue 5: where paged decoding's gap to cuDNN comes from on this GPU, and per-page L2 prefetches (PREFETCH).

Variants per case (H=32, Hk=8, D=128, bf16, one query token), each captured in a CUDA graph of 20 calls and
replayed in interleaved rounds: SDPA-cuDNN and flashtron on the contiguous cache; the Gluon kernel on pages of 16
in random order with PREFETCH 0 / 1 / 2 / 4 / -1; pages of 16 in order; one page per sequence ("whole").
Outputs of every paged variant must equal PREFETCH 0's bit for bit (same math) and the contiguous one to 1e-2."""
import statistics, sys, torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashtron import flash_attn_with_kvcache
from flashtron.bench_decode import page_table, to_pages
from flashtron.kernels import hopper_decode, launch_plans

CALLS, ROUNDS = 20, 7
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)


def graph_of(fn):
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(CALLS):
            fn()
    return g


def time_graph(g):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); g.replay(); b.record(); b.synchronize()
    return a.elapsed_time(b) / CALLS


print(torch.cuda.get_device_name(), torch.__version__)
src = torch.empty(1 << 28, dtype=torch.float32, device="cuda"); dst = torch.empty_like(src)
for _ in range(50):
    dst.copy_(src)
gc = graph_of(lambda: dst.copy_(src))
copy = 2 * src.numel() * 4 / statistics.median(time_graph(gc) for _ in range(5)) / 1e6
print(f"copy {copy:.0f} GB/s (read + written)")
del src, dst, gc
summary = []
for batch, seqlen in ((1, 131072), (64, 4096)):
    q = torch.randn(batch, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, seqlen, 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    kv_bytes = 2 * k.numel() * 2
    seqlens = torch.full((batch,), seqlen, dtype=torch.int32, device="cuda")
    graphs, outs = {}, {}
    qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
    graphs["cudnn"] = graph_of(cudnn)
    graphs["contiguous"] = graph_of(lambda: flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens))
    reference = flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens).float()
    layouts = {}
    for order in ("random", "sequential"):
        table = page_table(batch, seqlen, 16, gen, "cuda", order)
        layouts[order] = (table, to_pages(k, table, 16), to_pages(v, table, 16))
    whole = torch.arange(batch, dtype=torch.int32, device="cuda")[:, None]
    layouts["whole"] = (whole, k, v)
    variants = [("random", 0), ("random", 1), ("random", 2), ("random", 4), ("random", -1), ("sequential", 0),
                ("whole", 0), ("whole", 1)]
    for order, pf in variants:
        table, kp, vp = layouts[order]
        hopper_decode.PREFETCH = pf
        launch_plans.clear()
        fn = lambda table=table, kp=kp, vp=vp: flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=table)
        name = f"{order}/pf{pf}"
        outs[name] = fn().float()
        graphs[name] = graph_of(fn)
    hopper_decode.PREFETCH = 0
    launch_plans.clear()
    for name, o in outs.items():
        base = outs[name.split("/")[0] + "/pf0"]
        print(f"B={batch} Sk={seqlen} {name}: vs contiguous {(o - reference).abs().max().item():.2e}, "
              f"bitwise vs pf0 {torch.equal(o, base)}")
    times = {n: [] for n in graphs}
    for _ in range(ROUNDS):
        for n, g in graphs.items():
            times[n].append(time_graph(g))
    cud = statistics.median(times["cudnn"])
    for n, ts in times.items():
        med = statistics.median(ts)
        summary.append(f"| {batch}, {seqlen // 1024}k | {n} | {med * 1e3:.1f} | {kv_bytes / med / 1e6:.0f} | "
                       f"{cud / med:.3f} | {min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f} |")
    del graphs, layouts, k, v, q
    torch.cuda.empty_cache()
print("\n| case | variant | us (median) | GB/s | over cuDNN | range us |\n|---|---|---|---|---|---|")
print("\n".join(summary))
