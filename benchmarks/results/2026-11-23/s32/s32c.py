"""Session 32 (c): the backward's fixed passes at issue 3's shape (B 1, S 16k, H 16, D 128), launch shapes: the delta
pass (zeroing dQ's sums too) by BLOCK_M and num_warps, the dQ pass by BLOCK and num_warps.  Device time per call
(CUDA events over 50 calls, L2 not flushed: each pass moves 200-270 MB, 5x the L2), median of 5."""
import torch, triton
from flashtron.kernels.backward import attention_backward_preprocess as pre, attention_backward_postprocess as post

B, S, H, D = 1, 16384, 16, 128
out, dout = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
lse = torch.empty(B, H, S, device="cuda")
delta = torch.empty_like(lse)
buf = torch.empty(out.numel() + 1, device="cuda")
acc, counter = buf[:-1].view(out.shape), buf[-1:].view(torch.int32)
dq = torch.empty_like(out)


def timed(fn, n=50):
    fn(); torch.cuda.synchronize()
    res = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record(); torch.cuda.synchronize()
        res.append(a.elapsed_time(b) * 1000 / n)
    return sorted(res)[2]


def run_pre(bm, w):
    blocks = -(-S // bm)
    return lambda: pre[(blocks * B * H, )](out, dout, delta, *out.stride()[:3], *dout.stride()[:3], lse.stride(0),
                                          lse.stride(1), None, None, H, S, blocks, D, acc, *acc.stride()[:3], counter,
                                          BLOCK_D=D, EVEN_D=True, BLOCK_M=bm, VARLEN=False, SEQUSED_Q=False,
                                          ZERO_DQ=True, num_warps=w)


ref = None
print(torch.cuda.get_device_name())
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(200):
    x @ x
for bm, w in [(64, 4), (32, 4), (16, 4), (64, 8), (128, 8), (128, 4), (32, 2), (16, 2)]:
    acc.fill_(1.0)
    f = run_pre(bm, w)
    f(); torch.cuda.synchronize()
    ok = bool((acc == 0).all()) and (ref is None or torch.equal(delta, ref))
    ref = delta.clone() if ref is None else ref
    t = timed(f)
    print(f"delta pass BLOCK_M {bm:4d} warps {w}: {t:6.1f} us  {2 * out.numel() * 2 + 4 * out.numel()} B -> "
          f"{(4 * out.numel() + 4 * out.numel()) / t / 1e3:.0f} GB/s ok {ok}", flush=True)
acc.normal_()
for blk, w in [(4096, 4), (2048, 4), (8192, 8), (4096, 8), (16384, 8), (1024, 4)]:
    f = lambda: post[(triton.cdiv(acc.numel(), blk), )](acc, dq, acc.numel(), 0.1, BLOCK=blk, UPCAST=False,
                                                          num_warps=w)
    t = timed(f)
    print(f"dQ pass BLOCK {blk:5d} warps {w}: {t:6.1f} us -> {6 * acc.numel() / t / 1e3:.0f} GB/s", flush=True)
c = torch.empty_like(acc)
t = timed(lambda: c.copy_(acc))
print(f"copy fp32 (read+write 8 B/elt): {t:6.1f} us -> {8 * acc.numel() / t / 1e3:.0f} GB/s")
