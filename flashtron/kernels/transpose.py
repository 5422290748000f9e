"""FP8's values copied keys-innermost: the copy both FP8 forwards make of v before P V.

fp8 wgmma reads both operands of P V with the reduction dim contiguous, and for V that dim is the keys, which v
(batch, keys, heads, headdim) holds outermost.  So an FP8 forward first copies v to (batch, heads * headdim,
columns), keys innermost.  torch's permuted copy of one-byte elements moved ~300 GB/s on an H100: 220 µs for
the 33.5 MB of v at 16k tokens, 16 heads of 128, a quarter of the 4k forward's time (BENCHMARKS.md, session 34).
This kernel reads a tile of BLOCK_S keys of one head, rows of headdim bytes, and writes its transpose, rows of
BLOCK_S bytes: both sides move runs of consecutive bytes (23 µs for those 33.5 MB).

Column c of the copy holds key s = c (dense) or the key with target[s] = c (the Hopper forward's packed
batches, whose sequences start at 16-key multiples); dense columns past the last key are zeros, as a TMA box
or a masked load may read them as P V's keys past a sequence's end, where a NaN would still spread.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from flashtron.kernels import compiled

TILE_BYTES = 16384  # one program's tile: BLOCK_S keys x headdim (padded to a power of two) bytes


@compiled.fast_launch
@triton.jit
def keys_innermost_kernel(V, VT, Target, seqlen, columns, heads, batch_heads, stride_vb, stride_vs, stride_vh,
                          stride_tb, stride_tr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                          TARGETED: tl.constexpr):
    pid = tl.program_id(0)
    batch_head, pid_s = pid % batch_heads, pid // batch_heads  # a key's heads, side by side in v, read by neighbours
    batch, head = batch_head // heads, batch_head % heads
    s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    rows = batch.to(tl.int64) * stride_vb + s.to(tl.int64)[:, None] * stride_vs + head * stride_vh
    tile = tl.load(V + rows + d[None, :], mask=(s < seqlen)[:, None] & (d < HEAD_DIM)[None, :], other=0)
    if TARGETED:
        column = tl.load(Target + s, mask=s < seqlen, other=0)
        written = s < seqlen
    else:
        column = s
        written = s < columns
    out_rows = batch.to(tl.int64) * stride_tb + (head * HEAD_DIM + d).to(tl.int64)[:, None] * stride_tr
    tl.store(VT + out_rows + column[None, :], tl.trans(tile), mask=(d < HEAD_DIM)[:, None] & written[None, :])


def _launch(v: torch.Tensor, vt: torch.Tensor, target: Optional[torch.Tensor]):
    """keys_innermost's checks, then its kernel's (grid, args, kwargs); None where there is nothing to copy."""
    batch, seqlen, heads, head_dim = v.shape
    columns = vt.shape[2]
    if v.stride(3) != 1 or vt.stride(2) != 1 or vt.shape[:2] != (batch, heads * head_dim) or columns < seqlen:
        raise ValueError(f"keys_innermost: v {tuple(v.shape)} and vt {tuple(vt.shape)} do not match")
    if v.element_size() != 1 or vt.dtype != v.dtype:
        raise TypeError(f"keys_innermost copies one-byte elements; got v {v.dtype}, vt {vt.dtype}")
    block_d = triton.next_power_of_2(head_dim)
    block_s = max(16, TILE_BYTES // block_d)
    keys = seqlen if target is not None else columns
    if keys == 0 or batch * heads == 0:
        return None
    grid = (batch * heads * triton.cdiv(keys, block_s), )
    args = (v.view(torch.uint8), vt.view(torch.uint8), target, seqlen, columns, heads, batch * heads, v.stride(0),
            v.stride(1), v.stride(2), vt.stride(0), vt.stride(1))
    return grid, args, dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=block_s, TARGETED=target is not None,
                            num_warps=4)


def keys_innermost(v: torch.Tensor, vt: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Copy v (batch, keys, heads, headdim), unit stride on headdim, into vt (batch, heads * headdim, columns),
    unit stride on columns: vt[b, h * headdim + d, c] = v[b, s, h, d] with c = s, or c = target[s] (int32 (keys,),
    distinct columns; the others are left as they are).  Without target, columns >= keys and the columns past the
    last key are set to zero.  Returns vt.  CUDA tensors, or CPU tensors under Triton's interpreter."""
    launch = _launch(v, vt, target)
    if launch is not None:
        grid, args, kwargs = launch
        keys_innermost_kernel[grid](*args, **kwargs)
    return vt


def prepared_keys_innermost(v: torch.Tensor, vt: torch.Tensor):
    """keys_innermost(v, vt) (no target), and that copy as a `compiled.Prepared` launch for later calls of the same
    signature, which pass (v, vt) viewed as uint8; None where it made none (nothing to copy, or see Prepared.of)."""
    launch = _launch(v, vt, None)
    if launch is None:
        return None
    grid, args, kwargs = launch
    return keys_innermost_kernel.prepare(grid, args, kwargs, varying=(0, 1))
