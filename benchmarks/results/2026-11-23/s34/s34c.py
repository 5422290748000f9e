"""Session 34 (c): is FP8's keys-innermost copy of v what makes FP8 slower than bf16 at 4k?  Times, CUDA events,
median of 50: torch's permuted copy (hopper_forward.values_transposed, dense), a Triton transposition kernel
(prototype), the whole FP8 forward and the bf16 forward, at (B 4, S 4k) and (B 1, S 16k), H 16, D 128."""
import statistics, sys
import torch, triton, triton.language as tl
import flashtron
from flashtron.kernels import hopper_forward as hf


@triton.jit
def _transpose(V, VT, seqlen, padded, heads, stride_vb, stride_vs, stride_tb,
               HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_s, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    d = tl.arange(0, HEAD_DIM)
    x = tl.load(V + b.to(tl.int64) * stride_vb + s[:, None].to(tl.int64) * stride_vs + h * HEAD_DIM + d[None, :],
                mask=(s < seqlen)[:, None], other=0)
    tl.store(VT + b.to(tl.int64) * stride_tb + (h * HEAD_DIM + d)[:, None].to(tl.int64) * padded + s[None, :],
             tl.trans(x), mask=(s < padded)[None, :])


def tri(v, block_s, warps):
    B, S, H, D = v.shape
    padded = -(-S // 16) * 16
    vt = torch.empty(B, H * D, padded, dtype=v.dtype, device=v.device)
    _transpose[(triton.cdiv(padded, block_s), B * H)](v.view(torch.uint8), vt.view(torch.uint8), S, padded, H,
                                                      v.stride(0), v.stride(1), vt.stride(0), HEAD_DIM=D,
                                                      BLOCK_S=block_s, num_warps=warps)
    return vt


def timeit(fn, n=50):
    for _ in range(3):
        fn()
    ev = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        ev.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3


print(torch.cuda.get_device_name())
for B, S in ((4, 4096), (1, 16384), (3, 1000)):
    H, D = 16, 128
    q, k, v = (torch.randn(B, S, H, D, device="cuda").to(torch.float8_e4m3fn) for _ in range(3))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    ref = hf.values_transposed(v, 128)[0]
    row = [f"B{B} S{S}: torch copy {timeit(lambda: hf.values_transposed(v, 128)):.1f} us"]
    for bs, w in ((64, 4), (128, 4), (128, 8), (256, 8)):
        got = tri(v, bs, w)
        ok = torch.equal(got.view(torch.uint8), ref.view(torch.uint8))
        row.append(f"triton {bs}/{w} {timeit(lambda: tri(v, bs, w)):.1f} us{'' if ok else ' WRONG'}")
    for causal in (False, True):
        row.append(f"fwd{' causal' if causal else ''} fp8 {timeit(lambda: flashtron.flash_attn_func(q, k, v, causal=causal)):.0f}"
                   f" / bf16 {timeit(lambda: flashtron.flash_attn_func(qb, kb, vb, causal=causal)):.0f} us")
    print("; ".join(row), flush=True)
