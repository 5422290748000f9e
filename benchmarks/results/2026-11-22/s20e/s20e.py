"""Session 20 (e): why the new step ran 817 us against base 740 at 1k causal D 128 (s20d): device time per kernel
(profiler) of base, new, and new with the dQ sums zeroed by torch.zeros again (no ZERO_DQ); do_bench of the three
steps; the preprocess alone with and without ZERO_DQ."""
import inspect, statistics, sys, time
import torch, triton, triton.testing
from torch.profiler import profile, ProfilerActivity
sys.path.insert(0, "experiments/base20")
import flashtron, flashtron_base
from flashtron.kernels import hopper_backward as hb
from flashtron.kernels.backward import attention_backward_preprocess
print(torch.cuda.get_device_name(), torch.__version__, flush=True)

src = inspect.getsource(hb.backward)
src = src.replace("(torch.zeros if varlen is not None else torch.empty)", "torch.zeros")
src = src.replace("ZERO_DQ=varlen is None)", "ZERO_DQ=False)").replace("def backward(", "def backward_nozero(")
exec(src, hb.__dict__)
fused = hb.backward


def use(nozero):
    hb.backward = hb.backward_nozero if nozero else fused


def prof(step, ins, n=5):
    for t in ins:
        t.grad = None
    step(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            for t in ins:
                t.grad = None
            step()
        torch.cuda.synchronize()
    agg = {}
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            agg.setdefault(e.name[:50], []).append(e.time_range.elapsed_us())
    return sorted(((sum(v) / n, len(v) / n, k) for k, v in agg.items()), reverse=True)


for D, S, causal in ((128, 1024, True), (64, 1024, True), (64, 1024, False)):
    B, H = 16384 // S, 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    ins = [q, k, v]
    variants = {"base": lambda: flashtron_base.flash_attn_func(q, k, v, causal=causal).backward(g),
                "new": lambda: (use(False), flashtron.flash_attn_func(q, k, v, causal=causal).backward(g)),
                "new, torch.zeros": lambda: (use(True), flashtron.flash_attn_func(q, k, v, causal=causal).backward(g))}
    print(f"=== D{D} S{S} causal={causal}")
    for name, f in variants.items():
        ks = prof(f, ins)
        print(f"  {name}: device busy {sum(x[0] for x in ks):.0f} us")
        for us, cnt, kname in ks:
            print(f"      {us:8.1f} us x{cnt:.0f} {kname}")
    ms = {n: [] for n in variants}
    for rnd in range(3):
        for name, f in variants.items():
            ms[name].append(triton.testing.do_bench(f, warmup=25, rep=200, grad_to_none=ins, return_mode="median"))
    print("  do_bench step us (min of 3 rounds; rounds):",
          {n: (round(min(v) * 1e3), [round(x * 1e3) for x in v]) for n, v in ms.items()}, flush=True)
    use(False)

# The preprocess alone at 1k D 128 (B16 H16), as the Hopper backward launches it.
B, S, H, D = 16, 1024, 16, 128
out, dout = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
delta = torch.empty(B, H, S, device="cuda", dtype=torch.float32)
buf = torch.empty(out.numel() + 1, device="cuda", dtype=torch.float32)
acc = buf[:out.numel()].view(out.shape)
tc = buf[out.numel():].view(torch.int32)
blocks = S // 64


def pre(zero):
    attention_backward_preprocess[(blocks * B * H, )](
        out, dout, delta, *out.stride()[:3], *dout.stride()[:3], delta.stride(0), delta.stride(1), delta, delta, H, S,
        blocks, D, acc, *acc.stride()[:3], tc, BLOCK_D=D, EVEN_D=True, BLOCK_M=64, VARLEN=False, SEQUSED_Q=False,
        ZERO_DQ=zero)
for rnd in range(2):
    a = triton.testing.do_bench(lambda: pre(False), warmup=25, rep=100, return_mode="median")
    b = triton.testing.do_bench(lambda: pre(True), warmup=25, rep=100, return_mode="median")
    c = triton.testing.do_bench(lambda: buf.zero_(), warmup=25, rep=100, return_mode="median")
    print(f"preprocess alone: {a * 1e3:.1f} us, with ZERO_DQ {b * 1e3:.1f} us, zero_ of the buffer {c * 1e3:.1f} us")
