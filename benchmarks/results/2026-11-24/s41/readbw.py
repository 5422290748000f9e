"""Pure HBM read rate: torch.sum and a Triton streaming-read kernel over 512 MB, CUDA-graph timed."""
import torch, triton, triton.language as tl
from flashtron.bench_decode import _time_ms, DecodeConfig, copy_bandwidth

@triton.jit
def read_kernel(X, Out, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(ITERS):
        offs = (pid * ITERS + i) * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(X + offs, mask=offs < n, other=0.0, cache_modifier=".cg").to(tl.float32)
    tl.store(Out + pid * BLOCK + tl.arange(0, BLOCK), acc)

cfg = DecodeConfig()
print(torch.cuda.get_device_name(), "copy", round(copy_bandwidth(True)))
x = torch.randn(256 << 20, device="cuda", dtype=torch.bfloat16)  # 512 MB
nbytes = x.numel() * 2
print("torch.sum", round(nbytes / _time_ms(lambda: x.sum(), cfg, True) / 1e6), "GB/s")
for block, iters, warps in ((4096, 8, 8), (8192, 8, 8), (4096, 32, 8), (2048, 16, 4), (16384, 4, 16)):
    grid = triton.cdiv(x.numel(), block * iters)
    out = torch.empty(grid * block, device="cuda")
    f = lambda: read_kernel[(grid,)](x, out, x.numel(), BLOCK=block, ITERS=iters, num_warps=warps)
    print("triton read", block, iters, warps, round(nbytes / _time_ms(f, cfg, True) / 1e6), "GB/s")
