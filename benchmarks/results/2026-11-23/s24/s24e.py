"""Session 24 (e): the forward's key blocks in three runs (masked edge / plain / masked edge) instead of one loop
that picks the softmax per block, against HEAD (flashtron_base): forward alone, same process, 3 interleaved rounds
(best of the medians); outputs and lse compared bit for bit."""
import os, sys, json
sys.path.insert(0, "experiments/base24")
import torch, triton.testing
import flashtron, flashtron_base
print(torch.cuda.get_device_name(), flush=True)
OUT = os.environ.get("OUT", ".")
torch.manual_seed(2405)
CASES = [(128, 16384, "window", False), (128, 16384, "causal", False), (128, 16384, "none", False),
         (128, 1024, "causal", False), (128, 1024, "none", False), (128, 2048, "causal", False),
         (64, 1024, "causal", False), (64, 1024, "none", False), (64, 2048, "causal", False), (64, 2048, "none", False),
         (64, 4096, "causal", False), (64, 16384, "causal", False), (64, 16384, "none", False),
         (256, 1024, "causal", False), (256, 16384, "causal", False), (256, 16384, "none", False),
         (128, 16384, "causal", True)]
rows = []
ONLY = os.environ.get("ONLY_D")
CASES = [c for c in CASES if ONLY is None or c[0] == int(ONLY)] + ([(256, 4096, "causal", False), (256, 4096, "none", False), (256, 1024, "none", False), (256, 2048, "none", False),
                                 (256, 2048, "causal", False)] if ONLY == "256" else [])
for D, S, mask, fp8 in CASES:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    kw = dict(causal=mask != "none")
    if mask == "window":
        kw["window_size"] = (1024, 0)
    if fp8:
        q, k, v = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
        ds = torch.rand(B, H, device="cuda") + 0.5
        kw.update(q_descale=ds, k_descale=ds * 0.9, v_descale=ds * 1.1)
    fns = {"new": lambda: flashtron.flash_attn_func(q, k, v, return_attn_probs=True, **kw),
           "base": lambda: flashtron_base.flash_attn_func(q, k, v, return_attn_probs=True, **kw)}
    res = {n: f() for n, f in fns.items()}
    same = bool(torch.equal(res["new"][0], res["base"][0]) and torch.equal(res["new"][1], res["base"][1]))
    ms = {n: [] for n in fns}
    for r in range(3):
        for n, f in fns.items():
            ms[n].append(triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median"))
    best = {n: min(x) for n, x in ms.items()}
    rows.append(dict(D=D, S=S, mask=mask, fp8=fp8, ms=best, all_ms=ms, same=same))
    print(f"D{D} S{S} {mask}{' fp8' if fp8 else ''}: base {best['base'] * 1e3:.1f} us new {best['new'] * 1e3:.1f} us "
          f"speed {best['base'] / best['new']:.3f}x same {same}", flush=True)
json.dump(rows, open(os.path.join(OUT, "s24e.json"), "w"), indent=1)
