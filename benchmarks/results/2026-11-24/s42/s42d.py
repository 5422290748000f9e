"""Session 42 (b): kv heads per decoding program (G), full calls (CUDA graphs) and kernels alone (profiler)."""
import collections, statistics, sys
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashtron import flash_attn_with_kvcache
from flashtron.kernels import hopper_decode as hd, launch_plans
from flashtron.bench_decode import page_table, to_pages, _time_ms, DecodeConfig, copy_bandwidth

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
VARS = [tuple(int(x) for x in v.split(":")) for v in sys.argv[2].split(",")]  # G:box tokens
cfg = DecodeConfig()
gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
print("copy GB/s", round(copy_bandwidth(True)), flush=True)


def kernel_us(fn, calls=20):
    fn(); torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per = collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name.split("(")[0][:28]] += e.device_time_total / calls
    return {k: round(v, 1) for k, v in per.items()}


rows = []
for batch, seqlen in ((1, 131072), (64, 4096)):
    q = torch.randn(batch, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, seqlen, 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    seqlens = torch.full((batch,), seqlen, dtype=torch.int32, device="cuda")
    tables = {o: page_table(batch, seqlen, 16, gen, "cuda", o) for o in ("random", "order")}
    paged = {o: (to_pages(k, t, 16), to_pages(v, t, 16)) for o, t in tables.items()}
    qs, ks, vs = (x.transpose(1, 2) for x in (q, k, v))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
    ref = torch.nn.functional.scaled_dot_product_attention(qs.double(), ks.double(), vs.double(),
                                                           enable_gqa=True).transpose(1, 2)
    names = ["cudnn"] + [f"G{g}r{p}/{o}" for g, p in VARS for o in tables]
    t = {n: [] for n in names}
    kernels = {}
    for r in range(ROUNDS):
        for n in names:
            if n == "cudnn":
                t[n].append(_time_ms(cudnn, cfg, True) * 1e3)
                if r == 0:
                    kernels[n] = kernel_us(cudnn)
                continue
            var, order = n.split("/")
            g, p = var[1:].split("r")
            hd.HEADS, hd.BOX_TOKENS = int(g), int(p)
            launch_plans.clear()
            kp, vp = paged[order]
            fn = lambda: flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=tables[order])  # noqa
            err = (fn().double() - ref).abs().max().item()
            assert err < 1e-2, (n, err)
            t[n].append(_time_ms(fn, cfg, True) * 1e3)
            if r == 0:
                kernels[n] = kernel_us(fn)
    m = {n: statistics.median(x) for n, x in t.items()}
    for n in names:
        line = f"| {batch} | {seqlen} | {n} | {m[n]:.1f} | {m['cudnn'] / m[n]:.3f}x | {kernels[n]} |"
        rows.append(line)
        print(line, [round(x, 1) for x in t[n]], flush=True)
    q = k = v = paged = ref = None
    torch.cuda.empty_cache()
print("| B | Sk | variant | us | over cuDNN | kernels alone (us per call) |")
print("\n".join(rows))
