"""Session 41 (a): PEEL (the backward's invisible steps out of the step loop) and the decoder's program order.
1. Gradients of PEEL on against float64 (causal, windows, GQA, Sq != Sk, variable lengths) at D = 64 and 128.
2. Forward+backward steps as `flashtron bench` times them (bf16, B*S = 16k, H*D = 2048), PEEL off / on, interleaved
   do_bench rounds (median), with SDPA-cuDNN where it has the mask.
3. Paged decoding (page 16, random pages), program ids split-fastest (HEAD) / head-fastest, with SDPA-cuDNN.
argv: rounds [which: grad,bwd,dec]"""
import statistics, sys
import torch, triton.testing
import flashtron
from flashtron.kernels import hopper_backward as hb, hopper_decode as hd, launch_plans

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
WHICH = sys.argv[2].split(",") if len(sys.argv) > 2 else ["grad", "bwd", "dec"]
PEEL_ON = dict(getattr(hb, "PEEL", {}))


def peel(on, dims=(64, 128)):
    for key in getattr(hb, "PEEL", {}):
        hb.PEEL[key] = on and PEEL_ON[key]
    launch_plans.clear()


def reference(q, k, v, window, dout):
    qf, kf, vf = (t.detach().double().requires_grad_() for t in (q, k, v))
    g = q.shape[2] // k.shape[2]
    kr, vr = (t.repeat_interleave(g, 2) for t in (kf, vf))
    s = torch.einsum("bshd,bthd->bhst", qf, kr) * q.shape[-1] ** -0.5
    sq, sk = s.shape[-2:]
    i = torch.arange(sq, device=s.device)[:, None] + sk - sq
    j = torch.arange(sk, device=s.device)[None, :]
    keep = torch.ones(sq, sk, dtype=torch.bool, device=s.device)
    if window[0] >= 0:
        keep &= j >= i - window[0]
    if window[1] >= 0:
        keep &= j <= i + window[1]
    s = s.masked_fill(~keep, float("-inf"))
    o = torch.einsum("bhst,bthd->bshd", s.softmax(-1).nan_to_num(), vr)
    return torch.autograd.grad(o, (qf, kf, vf), dout.double())


print(torch.cuda.get_device_name(), flush=True)
if "grad" in WHICH:
    bad = 0
    for d in (64, 128):
        for name, (b, sq, sk, h, hk, window) in {
                "causal 1100": (2, 1100, 1100, 4, 4, (-1, 0)), "causal 1037x1300": (1, 1037, 1300, 4, 2, (-1, 0)),
                "causal 1300x1100": (1, 1300, 1100, 4, 4, (-1, 0)), "win 300,0 2100": (1, 2100, 2100, 6, 2, (300, 0)),
                "win 1024,0 2100": (2, 2100, 2100, 2, 2, (1024, 0)), "win 100,37 1500x1700": (1, 1500, 1700, 4, 4, (100, 37)),
                "win 77,-1 1200": (1, 1200, 1200, 4, 1, (77, -1)), "win 64,64 1200": (1, 1200, 1200, 2, 2, (64, 64)),
                "win 0,0 1100": (1, 1100, 1100, 2, 2, (0, 0))}.items():
            q = torch.randn(b, sq, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            kk, vv = (torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
            dout = torch.randn_like(q)
            ref = reference(q, kk, vv, window, dout)
            errs = {}
            for on in (False, True):
                peel(on)
                o = flashtron.flash_attn_func(q, kk, vv, window_size=window)
                g = torch.autograd.grad(o, (q, kk, vv), dout)
                errs[on] = [(x.double() - r).abs().max().item() for x, r in zip(g, ref)]
                assert all(torch.isfinite(x).all() for x in g)
            ok = all(e <= 1.5 * hh + 1e-3 for e, hh in zip(errs[True], errs[False]))
            bad += not ok
            print(f"D {d} {name}: off {[f'{e:.2e}' for e in errs[False]]} on {[f'{e:.2e}' for e in errs[True]]}"
                  + ("" if ok else "  <-- TOO LARGE"), flush=True)
        # variable lengths, causal and windowed
        lens = torch.tensor([5, 700, 63, 1600, 129, 1, 1100], device="cuda")
        cu = torch.cat([torch.zeros(1, device="cuda", dtype=torch.int32), lens.cumsum(0).int()])
        total = int(cu[-1])
        for window in ((-1, 0), (200, 0), (90, 30)):
            q = torch.randn(total, 4, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            kk, vv = (torch.randn(total, 2, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
            dout = torch.randn_like(q)
            refs = [reference(q[None, a:e], kk[None, a:e], vv[None, a:e], window, dout[None, a:e])
                    for a, e in zip(cu[:-1].tolist(), cu[1:].tolist())]
            ref = [torch.cat([r[i][0] for r in refs], 0) for i in range(3)]
            errs = {}
            for on in (False, True):
                peel(on)
                o = flashtron.flash_attn_varlen_func(q, kk, vv, cu, cu, int(lens.max()), int(lens.max()),
                                                     window_size=window)
                g = torch.autograd.grad(o, (q, kk, vv), dout)
                errs[on] = [(x.double() - r).abs().max().item() for x, r in zip(g, ref)]
            ok = all(e <= 1.5 * hh + 1e-3 for e, hh in zip(errs[True], errs[False]))
            bad += not ok
            print(f"D {d} varlen {window}: off {[f'{e:.2e}' for e in errs[False]]} on {[f'{e:.2e}' for e in errs[True]]}"
                  + ("" if ok else "  <-- TOO LARGE"), flush=True)
    assert not bad, "error too large"
    peel(True)

if "bwd" in WHICH:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    CELLS = [(128, 16384, (1024, 0)), (128, 16384, (-1, 0)), (128, 2048, (-1, 0)), (128, 16384, (256, 0)),
             (64, 1024, (-1, 0)), (64, 4096, (-1, 0)), (64, 16384, (-1, 0))]
    rows = []
    for D, S, window in CELLS:
        H, B = 2048 // D, 16384 // S
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        grad = torch.randn_like(q)
        qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        gradt = grad.transpose(1, 2).contiguous()
        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True).backward(gradt)
        def ours():
            flashtron.flash_attn_func(q, k, v, window_size=window).backward(grad)
        names = (["off", "on"] if PEEL_ON else ["head"]) + (["cudnn"] if window == (-1, 0) else [])
        t = {n: [] for n in names}
        for _ in range(ROUNDS):
            for n in names:
                if n == "cudnn":
                    f, inputs = cudnn, [qt, kt, vt]
                else:
                    peel(n == "on"); f, inputs = ours, [q, k, v]
                f()
                t[n].append(triton.testing.do_bench(f, warmup=25, rep=150, grad_to_none=inputs, return_mode="median") * 1e3)
        m = {n: statistics.median(x) for n, x in t.items()}
        rows.append(f"| {D} | {S} | {window} | " + " | ".join(f"{n} {m[n]:.0f}" for n in names)
                    + (f" | {m['off'] / m['on']:.3f}x |" if PEEL_ON else " |"))
        print(rows[-1], " rounds:", {n: [round(x) for x in v] for n, v in t.items()}, flush=True)
    peel(True)
    print("| D | S | window | medians (us) | on over off |")
    print("\n".join(rows))

if "dec" in WHICH:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from flashtron import flash_attn_with_kvcache
    from flashtron.bench_decode import page_table, to_pages, _time_ms, DecodeConfig, copy_bandwidth
    cfg = DecodeConfig()
    gen = torch.Generator().manual_seed(0)
    rows = []
    print("copy GB/s", round(copy_bandwidth(True)), flush=True)
    for batch, seqlen in ((1, 131072), (64, 4096), (8, 16384)):
        q = torch.randn(batch, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(batch, seqlen, 8, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        seqlens = torch.full((batch,), seqlen, dtype=torch.int32, device="cuda")
        table = page_table(batch, seqlen, 16, gen, "cuda")
        kp, vp = to_pages(k, table, 16), to_pages(v, table, 16)
        qs, ks, vs = (x.transpose(1, 2) for x in (q, k, v))
        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
        def paged():
            return flash_attn_with_kvcache(q, kp, vp, cache_seqlens=seqlens, block_table=table)
        ref = flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens).float()
        t = {n: [] for n in ("split-fastest", "head-fastest", "cudnn")}
        for _ in range(max(ROUNDS, 3)):
            for n in t:
                if n == "cudnn":
                    t[n].append(_time_ms(cudnn, cfg, True) * 1e3)
                else:
                    hd.HEADS_FASTEST = n == "head-fastest"; launch_plans.clear()
                    assert (paged().float() - ref).abs().max().item() < 2e-2
                    t[n].append(_time_ms(paged, cfg, True) * 1e3)
        m = {n: statistics.median(x) for n, x in t.items()}
        rows.append(f"| {batch} | {seqlen} | {m['cudnn']:.1f} | {m['split-fastest']:.1f} ({m['cudnn'] / m['split-fastest']:.3f}x)"
                    f" | {m['head-fastest']:.1f} ({m['cudnn'] / m['head-fastest']:.3f}x) |")
        print(rows[-1], {n: [round(x, 1) for x in v] for n, v in t.items()}, flush=True)
        q = k = v = kp = vp = None
        torch.cuda.empty_cache()
    hd.HEADS_FASTEST = False
    print("| B | Sk | cuDNN us | paged, split-fastest | paged, head-fastest |")
    print("\n".join(rows))
