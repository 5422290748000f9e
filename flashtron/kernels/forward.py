"""Forward kernel: one program computes one (batch, head, query tile) with an online softmax.

Tensors are (batch, seqlen, heads, headdim), or packed (total, heads, headdim)
for variable-length batches (see seqlen_info), with a unit stride on headdim.
Scores are kept in base 2 (scaled by softmax_scale * log2(e)) so the inner
loop uses exp2; the log-sum-exp written out is converted back to the natural
log, as flash-attn returns it.  A query row that sees no key gets output 0 and
lse +inf, which makes every probability the backward recomputes from it 0.

Offsets that can exceed 2**31 (batch, head and sequence positions times their
strides) are formed in int64; offsets inside a tile stay int32.
"""

import triton
import triton.language as tl

from flashtron.kernels.block_info import BAND_MASK, FULL_MASK, head_dim_mask, inner_block_range, sees_no_inner, visible
from flashtron.kernels.dropout import dropout_keep, dropout_seed
from flashtron.kernels.precision import downcast, mma
from flashtron.kernels.score_mod import LOG2E, alibi_slope, logits_log2
from flashtron.kernels.seqlen_info import sequence_extent
from flashtron.kernels.tile_scheduler import tile_of_program

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _forward_segment(acc, row_max, row_sum, q, k_base, v_base, kt_tile, v_tile, stride_kn, stride_vn,
                     offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
                     softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed, batch_head, dropout_p,
                     start, end, full_lo, full_hi,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, head_dim,
                     BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, MASK: tl.constexpr,
                     HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, FOLD_SCALE: tl.constexpr,
                     SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DROPOUT: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    offs_n_tile = tl.arange(0, BLOCK_N)
    d_in = head_dim_mask(offs_d, head_dim, EVEN_D)
    kt_ptrs = k_base + tl.cast(start, tl.int64) * stride_kn + kt_tile
    v_ptrs = v_base + tl.cast(start, tl.int64) * stride_vn + v_tile
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + offs_n_tile
        if MASK == FULL_MASK:
            kt = tl.load(kt_ptrs, mask=d_in[:, None] & (offs_n < seqlen_k)[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=(offs_n < seqlen_k)[:, None] & d_in[None, :], other=0.0)
        elif not EVEN_D:
            kt = tl.load(kt_ptrs, mask=d_in[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=d_in[None, :], other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        scores = mma(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), INPUT_PRECISION, UPCAST)
        if not FOLD_SCALE:
            scores, _ = logits_log2(scores, offs_m[:, None], offs_n[None, :], diagonal, softmax_scale,
                                    qk_scale_log2, softcap, slope, SOFTCAP, ALIBI)
        if MASK == FULL_MASK:
            keep = visible(offs_m, offs_n, seqlen_k, diagonal, window_left, window_right, HAS_LO, HAS_HI)
            scores = tl.where(keep, scores, float("-inf"))
        elif HAS_LO or HAS_HI:
            if (start_n < full_lo) | (start_n >= full_hi):
                keep = visible(offs_m, offs_n, seqlen_k, diagonal, window_left, window_right, HAS_LO, HAS_HI,
                               False)
                scores = tl.where(keep, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1) * score_scale)
        reference = new_max
        if (MASK == FULL_MASK) or HAS_LO or HAS_HI:
            # A row with nothing visible yet keeps its max at -inf; subtract 0 instead so exp2
            # gives 0, not NaN.  The -inf itself is kept: a later real max must replace it.
            reference = tl.where(new_max == float("-inf"), 0.0, new_max)
        # One FMA per score: the scale is applied here, not to the whole tile beforehand.
        p = tl.math.exp2(scores * score_scale - reference[:, None])
        rescale = tl.math.exp2(row_max - reference)
        row_sum = row_sum * rescale + tl.sum(p, 1)
        if DROPOUT:
            # The denominator keeps every probability; only the weights applied to V are dropped
            # (their 1 / (1 - dropout_p) scale is applied once, at the end).
            p = tl.where(dropout_keep(seed, batch_head, offs_m, start_n, dropout_p, BLOCK_N), p, 0.0)
        acc = mma(downcast(p, v.dtype, UPCAST), v, acc * rescale[:, None], INPUT_PRECISION, UPCAST)
        row_max = new_max
        kt_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, row_max, row_sum


@triton.jit
def attention_forward_kernel(
        Q, K, V, Out, Lse,
        stride_qb, stride_qm, stride_qh,
        stride_kb, stride_kn, stride_kh,
        stride_vb, stride_vn, stride_vh,
        stride_ob, stride_om, stride_oh,
        stride_lse_b, stride_lse_h,
        CuSeqlensQ, CuSeqlensK, SeqUsedQ, SeqUsedK,
        Alibi, stride_alibi_b, Sinks, DropoutSeed, dropout_p,
        num_heads, kv_group_size, max_seqlen_q, max_seqlen_k, num_m_blocks,
        softmax_scale, qk_scale_log2, softcap, window_left, window_right,
        head_dim, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        VARLEN: tl.constexpr, SEQUSED_Q: tl.constexpr, SEQUSED_K: tl.constexpr,
        HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, FOLD_SCALE: tl.constexpr,
        SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, SINKS: tl.constexpr, DROPOUT: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # With an upper bound on the keys (causal), later query tiles do more work.
    m_block, batch_head, batch, head = tile_of_program(tl.program_id(0), num_m_blocks, num_heads, HAS_HI)
    head_kv = head // kv_group_size
    start_m = m_block * BLOCK_M
    q_start, seqlen_q = sequence_extent(CuSeqlensQ, SeqUsedQ, batch, max_seqlen_q, VARLEN, SEQUSED_Q)
    if start_m >= seqlen_q:
        # Tiles past a short sequence's end (the grid is sized for the longest).
        return
    k_start, seqlen_k = sequence_extent(CuSeqlensK, SeqUsedK, batch, max_seqlen_k, VARLEN, SEQUSED_K)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = head_dim_mask(offs_d, head_dim, EVEN_D)
    m_in = offs_m < seqlen_q

    row_tile = tl.arange(0, BLOCK_M)[:, None]
    q_ptrs = (Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
              + (q_start + start_m).to(tl.int64) * stride_qm + row_tile * stride_qm + offs_d[None, :])
    q = tl.load(q_ptrs, mask=m_in[:, None] & d_in[None, :], other=0.0)
    k_base = K + batch.to(tl.int64) * stride_kb + head_kv.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + batch.to(tl.int64) * stride_vb + head_kv.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn
    kt_tile = offs_d[:, None] + offs_n[None, :] * stride_kn
    v_tile = offs_n[:, None] * stride_vn + offs_d[None, :]

    # FOLD_SCALE (a positive scale, no soft-capping, no ALiBi): the row max is taken on raw
    # scores and scaled once per row.  Otherwise the logits are formed tile-wise first.
    if FOLD_SCALE:
        score_scale = qk_scale_log2
    else:
        score_scale = 1.0
    slope = alibi_slope(Alibi, stride_alibi_b, batch, head, ALIBI)
    seed = dropout_seed(DropoutSeed, DROPOUT)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    if SINKS:
        # The sink is one more logit in every row's denominator, with no value vector:
        # the online softmax starts from it (max = sink, sum = exp(sink - max) = 1).
        row_max = tl.zeros([BLOCK_M], dtype=tl.float32) + tl.load(Sinks + head) * LOG2E
        row_sum = row_sum + 1.0
    diagonal = seqlen_k - seqlen_q
    lo, full_lo, full_hi, tail, hi = inner_block_range(start_m, seqlen_k, diagonal, window_left, window_right,
                                                       BLOCK_M, BLOCK_N, HAS_LO, HAS_HI)
    acc, row_max, row_sum = _forward_segment(
        acc, row_max, row_sum, q, k_base, v_base, kt_tile, v_tile, stride_kn, stride_vn,
        offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
        softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed, batch_head, dropout_p,
        lo, tail, full_lo, full_hi, BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, BAND_MASK, HAS_LO, HAS_HI,
        FOLD_SCALE, SOFTCAP, ALIBI, DROPOUT, INPUT_PRECISION, UPCAST)
    acc, row_max, row_sum = _forward_segment(
        acc, row_max, row_sum, q, k_base, v_base, kt_tile, v_tile, stride_kn, stride_vn,
        offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
        softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed, batch_head, dropout_p,
        tail, hi, full_lo, full_hi, BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, FULL_MASK, HAS_LO, HAS_HI,
        FOLD_SCALE, SOFTCAP, ALIBI, DROPOUT, INPUT_PRECISION, UPCAST)

    saw_nothing = sees_no_inner(offs_m, seqlen_k, diagonal, window_left, window_right, HAS_LO, HAS_HI)
    row_sum = tl.where(row_sum == 0.0, 1.0, row_sum)
    out = acc / row_sum[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    lse = tl.where(saw_nothing, float("inf"), (row_max + tl.math.log2(row_sum)) * LN2)

    o_ptrs = (Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
              + (q_start + start_m).to(tl.int64) * stride_om + row_tile * stride_om + offs_d[None, :])
    tl.store(o_ptrs, downcast(out, Out.dtype.element_ty, UPCAST), mask=m_in[:, None] & d_in[None, :])
    # softmax_lse is (batch, heads, seqlen_q), or (heads, total_q) for varlen (batch stride 0).
    lse_ptrs = (Lse + batch.to(tl.int64) * stride_lse_b + head.to(tl.int64) * stride_lse_h
                + q_start.to(tl.int64) + offs_m)
    tl.store(lse_ptrs, lse, mask=m_in)
