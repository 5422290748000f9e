"""Session 20 (d): the fast launches (compiled kernels reused per specialisation, plain descriptors, no zero
lse gradient, dQ sums zeroed by the preprocess) against HEAD's code (experiments/base20, as flashtron_base), in
one process.  1. outputs and gradients equal (dQ within float32 reordering); 2. host time of the eager step,
interleaved, GPU kept busy; 3. do_bench of the step (as `flashtron bench`) for both and SDPA-cuDNN."""
import statistics, sys, time
import torch, triton.testing
from torch.nn.attention import sdpa_kernel, SDPBackend
sys.path.insert(0, "experiments/base20")
import flashtron, flashtron_base
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
IMPLS = {"new": flashtron.flash_attn_func, "base": flashtron_base.flash_attn_func}
T, HID = 16384, 2048


def busy():
    torch.cuda.synchronize()
    torch.cuda._sleep(100_000_000)


def check(D, S, causal):
    B, H = T // S, HID // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    res = {}
    for name, f in IMPLS.items():
        for t in (q, k, v):
            t.grad = None
        out, lse, _ = f(q, k, v, causal=causal, return_attn_probs=True)
        out.backward(g)
        res[name] = (out, lse, q.grad, k.grad, v.grad)
    eq = [torch.equal(a, b) for a, b in zip(res["new"], res["base"])]
    dq = (res["new"][2].float() - res["base"][2].float()).abs().max().item()
    print(f"  D{D} S{S} causal={causal}: out, lse, dq, dk, dv equal bits {eq}, dq max diff {dq:.2e}", flush=True)
    return eq[0] and eq[1] and eq[3] and eq[4] and dq < 2e-2


def main():
    print("=== 1. new against base")
    ok = all([check(128, 1024, True), check(64, 1024, True), check(128, 2048, False), check(64, 4096, False),
              check(128, 777, True)])
    print("  all ok:", ok, flush=True)
    print("=== 2. host us of the eager step (median of 150 interleaved), and 3. do_bench ms")
    rows = []
    for D, S, causal in ((128, 1024, True), (128, 1024, False), (64, 1024, True), (64, 1024, False),
                         (128, 2048, True), (64, 2048, True), (128, 4096, True)):
        B, H = T // S, HID // D
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn_like(q)
        steps = {name: (lambda f=f: f(q, k, v, causal=causal).backward(g)) for name, f in IMPLS.items()}
        qc, kc, vc = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
        gc = g.transpose(1, 2).contiguous()

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=causal).backward(gc)
        for f in steps.values():
            f(); f()
        cudnn()
        ts = {name: [] for name in steps}
        for j in range(150):
            if j % 10 == 0:
                busy()
            for name, f in steps.items():
                for t in (q, k, v):
                    t.grad = None
                t0 = time.perf_counter(); f(); ts[name].append((time.perf_counter() - t0) * 1e6)
        torch.cuda.synchronize()
        host = {n: statistics.median(v) for n, v in ts.items()}
        ms = {}
        for rnd in range(2):
            for name, f in (*steps.items(), ("cudnn", cudnn)):
                ins = [qc, kc, vc] if name == "cudnn" else [q, k, v]
                ms.setdefault(name, []).append(triton.testing.do_bench(f, warmup=25, rep=200, grad_to_none=ins,
                                                                      return_mode="median"))
        ms = {n: min(v) for n, v in ms.items()}
        row = (f"D{D} S{S} {'causal' if causal else 'full'}", host["base"], host["new"], ms["base"] * 1e3,
               ms["new"] * 1e3, ms["cudnn"] * 1e3)
        rows.append(row)
        print("  %-18s host base %6.0f new %6.0f us | step base %6.0f new %6.0f cudnn %6.0f us" % row, flush=True)
    print("\nshape              | host us base/new | step us base/new/cudnn | cudnn/base cudnn/new")
    for r in rows:
        print(f"{r[0]:18s} | {r[1]:6.0f} {r[2]:6.0f} | {r[3]:6.0f} {r[4]:6.0f} {r[5]:6.0f} | {r[5] / r[3]:.3f} {r[5] / r[4]:.3f}")


main()
