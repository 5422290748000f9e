"""Session 42 (a): the decoder reading every kv head of its tokens in one program (HEADS = Hk) against one
kv head per program (HEAD), random and in-order pages of 16, and SDPA-cuDNN on the contiguous cache.
Ran on the first form of the change (switch HEADS_IN_KEYS: all kv heads through a 3-D view (pages, page_size * Hk,
D)); heads-per-program.diff is the later general form (any G, 4-D boxes) that s42b and s42d ran."""
import statistics, sys
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from flashtron import flash_attn_with_kvcache
from flashtron.kernels import hopper_decode as hd, launch_plans
from flashtron.bench_decode import page_table, to_pages, _time_ms, DecodeConfig, copy_bandwidth

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
VARIANTS = {"g1": (False, 1), "all-1": (True, 1), "all-2": (True, 2)}
cfg = DecodeConfig()
gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
print("copy GB/s", round(copy_bandwidth(True)), flush=True)
rows = []
for batch, seqlen in ((1, 131072), (64, 4096), (8, 16384)):
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
    names = ["cudnn"] + [f"{n}/{o}" for n in VARIANTS for o in tables]
    t = {n: [] for n in names}
    for _ in range(ROUNDS):
        for n in names:
            if n == "cudnn":
                t[n].append(_time_ms(cudnn, cfg, True) * 1e3)
                continue
            var, order = n.split("/")
            hd.HEADS_IN_KEYS, hd.PROGRAMS_PER_SM = VARIANTS[var]
            launch_plans.clear()
            kp, vp = paged[order]
            fn = lambda: flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=tables[order])  # noqa
            err = (fn().double() - ref).abs().max().item()
            assert err < 1e-2, (n, err)
            t[n].append(_time_ms(fn, cfg, True) * 1e3)
    m = {n: statistics.median(x) for n, x in t.items()}
    rows.append(f"| {batch} | {seqlen} | {m['cudnn']:.1f} | " + " | ".join(
        f"{m[n]:.1f} ({m['cudnn'] / m[n]:.3f}x)" for n in names[1:]) + " |")
    print(rows[-1], {n: [round(x, 1) for x in v] for n, v in t.items()}, flush=True)
    q = k = v = paged = ref = None
    torch.cuda.empty_cache()
print("| B | Sk | cuDNN us | " + " | ".join(names[1:]) + " |")
print("\n".join(rows))
