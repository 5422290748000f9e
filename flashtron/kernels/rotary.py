"""Rotary position embeddings (RoPE) in Triton: the shared helpers, the kernel and its launcher.

A rotation acts on pairs of columns of the first `rotary_dim` columns of every (token, head) row:
columns (j, j + rotary_dim / 2) (GPT-NeoX), or (2j, 2j + 1) when interleaved (GPT-J).  The token at
position p turns pair j by the angle whose cosine and sine are cos[p, j] and sin[p, j]; the
conjugate rotation (sin negated) undoes it and is the backward.  Arithmetic is fp32 and the result
is rounded once to the output dtype.  A position outside [0, seqlen_ro) reads cos 1 and sin 0, so
it leaves its row unchanged instead of reading past the table.  `rotate_rows` and `copy_columns`
are jit helpers that `kernels.cache_update` reuses; `apply_rotary` launches `rotary_kernel` on
arguments already checked by `flashtron.rotary`.
"""

import contextlib

import torch
import triton
import triton.language as tl

from flashtron.kernels import compiled
from flashtron.kernels import launch  # noqa: F401  (installs the interpreter fixes under TRITON_INTERPRET=1)
from flashtron.kernels.precision import downcast

_MAX_PROGRAMS = 2**31 - 1


@triton.jit
def rotate_rows(x_rows, out_rows, row_mask, positions, Cos, Sin, seqlen_ro, rotary_half, stride_x_d,
                stride_out_d, INTERLEAVED: tl.constexpr, CONJUGATE: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_HALF: tl.constexpr):
    """Rotate the first 2 * rotary_half columns of a block of rows.

    x_rows, out_rows: pointers to the first column of each row ([BLOCK_M]); positions: [BLOCK_M]
    integer positions in the cos/sin tables (contiguous, (seqlen_ro, rotary_half)).  Both members
    of every pair are loaded before either is stored, so out_rows may equal x_rows.
    """
    pair = tl.arange(0, BLOCK_HALF)
    if INTERLEAVED:
        first, second = 2 * pair, 2 * pair + 1
    else:
        first, second = pair, pair + rotary_half
    mask = row_mask[:, None] & (pair < rotary_half)[None, :]
    inside = (positions >= 0) & (positions < seqlen_ro)
    table = positions.to(tl.int64)[:, None] * rotary_half + pair[None, :]
    table_mask = mask & inside[:, None]
    cos = tl.load(Cos + table, mask=table_mask, other=1.0).to(tl.float32)
    sin = tl.load(Sin + table, mask=table_mask, other=0.0).to(tl.float32)
    if CONJUGATE:
        sin = -sin
    x_first = tl.load(x_rows[:, None] + first[None, :] * stride_x_d, mask=mask, other=0.0).to(tl.float32)
    x_second = tl.load(x_rows[:, None] + second[None, :] * stride_x_d, mask=mask, other=0.0).to(tl.float32)
    out_first = x_first * cos - x_second * sin
    out_second = x_first * sin + x_second * cos
    dtype = out_rows.dtype.element_ty
    tl.store(out_rows[:, None] + first[None, :] * stride_out_d, downcast(out_first, dtype, UPCAST), mask=mask)
    tl.store(out_rows[:, None] + second[None, :] * stride_out_d, downcast(out_second, dtype, UPCAST), mask=mask)


@triton.jit
def copy_columns(src_rows, dst_rows, row_mask, first_column, num_columns, stride_src_d, stride_dst_d,
                 BLOCK_D: tl.constexpr):
    """Copy columns [first_column, num_columns) of a block of rows, bit for bit."""
    for start in range(first_column, num_columns, BLOCK_D):
        columns = start + tl.arange(0, BLOCK_D)
        mask = row_mask[:, None] & (columns < num_columns)[None, :]
        values = tl.load(src_rows[:, None] + columns[None, :] * stride_src_d, mask=mask)
        tl.store(dst_rows[:, None] + columns[None, :] * stride_dst_d, values, mask=mask)


@compiled.fast_launch
@triton.jit
def rotary_kernel(Out, X, Cos, Sin, CuSeqlens, SeqlenOffsets, seqlen_offset, seqlen, num_heads, num_m_blocks,
                  head_dim, rotary_half, seqlen_ro,
                  stride_x_b, stride_x_s, stride_x_h, stride_x_d,
                  stride_out_b, stride_out_s, stride_out_h, stride_out_d,
                  VARLEN: tl.constexpr, OFFSETS_TENSOR: tl.constexpr, INTERLEAVED: tl.constexpr,
                  CONJUGATE: tl.constexpr, COPY_TAIL: tl.constexpr, UPCAST: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_TAIL: tl.constexpr):
    # Heads vary fastest, so neighbouring programs read the same cos/sin rows.
    pid = tl.program_id(0)
    head = pid % num_heads
    m_block = (pid // num_heads) % num_m_blocks
    batch = pid // (num_heads * num_m_blocks)
    if VARLEN:
        start = tl.load(CuSeqlens + batch)
        sequence_length = tl.load(CuSeqlens + batch + 1) - start
        x_base = X + start.to(tl.int64) * stride_x_s + head.to(tl.int64) * stride_x_h
        out_base = Out + start.to(tl.int64) * stride_out_s + head.to(tl.int64) * stride_out_h
    else:
        sequence_length = seqlen
        x_base = X + batch.to(tl.int64) * stride_x_b + head.to(tl.int64) * stride_x_h
        out_base = Out + batch.to(tl.int64) * stride_out_b + head.to(tl.int64) * stride_out_h
    if OFFSETS_TENSOR:
        offset = tl.load(SeqlenOffsets + batch)
    else:
        offset = seqlen_offset
    # The loop (instead of one block per program) keeps every token covered even when max_seqlen
    # understates a sequence's length.
    for row_start in range(m_block * BLOCK_M, sequence_length, num_m_blocks * BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < sequence_length
        x_rows = x_base + rows.to(tl.int64) * stride_x_s
        out_rows = out_base + rows.to(tl.int64) * stride_out_s
        rotate_rows(x_rows, out_rows, row_mask, offset + rows, Cos, Sin, seqlen_ro, rotary_half, stride_x_d,
                    stride_out_d, INTERLEAVED, CONJUGATE, UPCAST, BLOCK_HALF)
        if COPY_TAIL:
            copy_columns(x_rows, out_rows, row_mask, 2 * rotary_half, head_dim, stride_x_d, stride_out_d,
                         BLOCK_TAIL)


def block_rows(block_half: int) -> int:
    """Rows per tile: about 1k fp32 values per pair member."""
    return max(1, min(16, 1024 // block_half))


def apply_rotary(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlen_offsets,
                 seqlen_offset: int, cu_seqlens, max_seqlen: int, interleaved: bool, conjugate: bool) -> None:
    """Write the rotation of x into out (out may be x: in place).

    x, out: (batch, seqlen, heads, head_dim), or (total, heads, head_dim) with cu_seqlens (int32
    (batch + 1,)) and max_seqlen; any strides.  cos, sin: contiguous (seqlen_ro, rotary_dim / 2).
    seqlen_offsets: int32/int64 (batch,) or None, in which case the int seqlen_offset applies.
    """
    varlen = cu_seqlens is not None
    if varlen:
        batch, seqlen = cu_seqlens.shape[0] - 1, max_seqlen
        strides_x = (0, *x.stride())
        strides_out = (0, *out.stride())
    else:
        batch, seqlen = x.shape[0], x.shape[1]
        strides_x, strides_out = x.stride(), out.stride()
    num_heads, head_dim = x.shape[-2], x.shape[-1]
    seqlen_ro, rotary_half = cos.shape
    if x.numel() == 0 or batch == 0:
        return
    block_half = triton.next_power_of_2(rotary_half)
    block_m = block_rows(block_half)
    num_m_blocks = max(1, triton.cdiv(seqlen, block_m))
    programs = batch * num_heads * num_m_blocks
    if programs > _MAX_PROGRAMS:
        raise ValueError(f"problem too large: {programs} programs exceed the grid limit of {_MAX_PROGRAMS}")
    copy_tail = out is not x and 2 * rotary_half < head_dim
    with device_context(x):
        rotary_kernel[(programs,)](
            out, x, cos, sin, x if cu_seqlens is None else cu_seqlens,
            x if seqlen_offsets is None else seqlen_offsets, int(seqlen_offset), seqlen, num_heads,
            num_m_blocks, head_dim, rotary_half, seqlen_ro, *strides_x, *strides_out,
            VARLEN=varlen, OFFSETS_TENSOR=seqlen_offsets is not None, INTERLEAVED=interleaved,
            CONJUGATE=conjugate, COPY_TAIL=copy_tail, UPCAST=launch.INTERPRET and x.dtype == torch.bfloat16,
            BLOCK_M=block_m, BLOCK_HALF=block_half,
            BLOCK_TAIL=min(128, triton.next_power_of_2(max(1, head_dim - 2 * rotary_half))))


def device_context(t: torch.Tensor):
    """Launch on t's GPU (Triton launches on the current device), or nothing on the CPU."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
