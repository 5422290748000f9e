"""Session 35 (b): host time of eager calls, the package in sys.argv[1] (HEAD's copy or the working tree), one
process each, alternated by s35b.sh.  Per cell: the step's host time with the GPU kept busy (autograd as users run
it), the forward call's host time (no grad), and do_bench of the step as `flashtron bench` runs it (L2 flushed,
grads to None), with SDPA-cuDNN's step in the same process."""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch, triton
import flashtron
from torch.nn.attention import sdpa_kernel, SDPBackend

print(flashtron.__file__, torch.cuda.get_device_name(), flush=True)
rows = []
for D, S, causal in [(128, 1024, True), (128, 1024, False), (64, 1024, False), (128, 2048, True), (64, 2048, True)]:
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)

    def step():
        flashtron.flash_attn_func(q, k, v, causal=causal).backward(grad)

    def fwd():
        with torch.no_grad():
            flashtron.flash_attn_func(q, k, v, causal=causal)

    qt, kt, vt, gt = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v, grad))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(gt)

    def host(fn, n=100):
        for t in (q, k, v, qt, kt, vt):
            t.grad = None
        torch.cuda.synchronize()
        torch.cuda._sleep(int(0.4 * 1.98e9))
        times = []
        for _ in range(n):
            for t in (q, k, v):
                t.grad = None
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        torch.cuda.synchronize()
        return statistics.median(times) * 1e6

    for _ in range(3):
        step(); fwd(); cudnn()
    r = dict(D=D, S=S, causal=causal, host_step=host(step), host_fwd=host(fwd),
             bench=triton.testing.do_bench(step, grad_to_none=[q, k, v], return_mode="median") * 1e3,
             cudnn=triton.testing.do_bench(cudnn, grad_to_none=[qt, kt, vt], return_mode="median") * 1e3,
             host_cudnn=host(cudnn))
    r["bench2"] = triton.testing.do_bench(step, grad_to_none=[q, k, v], return_mode="median") * 1e3
    print(json.dumps(r), flush=True)
    rows.append(r)
for r in rows:
    print(f"D{r['D']} {r['S']} {'causal' if r['causal'] else 'none  '} host step {r['host_step']:6.0f} fwd "
          f"{r['host_fwd']:5.0f} | bench {r['bench']:6.0f} {r['bench2']:6.0f} cudnn {r['cudnn']:6.0f} "
          f"(host {r['host_cudnn']:4.0f}) ratio {r['cudnn'] / min(r['bench'], r['bench2']):.3f}")
