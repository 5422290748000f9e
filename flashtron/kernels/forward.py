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

from flashtron.kernels import compiled
from flashtron.kernels.block_info import (BAND_MASK, FULL_MASK, head_dim_mask, inner_block_range,
                                          split_block_range, visible)
from flashtron.kernels.dropout import dropout_keep, dropout_seed
from flashtron.kernels.precision import downcast, mma
from flashtron.kernels.score_mod import LOG2E, alibi_slope, bias_tile, logits_log2
from flashtron.kernels.pack_gqa import tile_rows
from flashtron.kernels.paged_kv import chunk_length, load_page_chunk, paged_position
from flashtron.kernels.seqlen_info import key_extent, sequence_extent
from flashtron.kernels.tile_scheduler import tile_of_program

LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _attend_block(acc, row_max, row_sum, q, kt, v, bias_ptrs, m_in, offs_m, offs_n, start_n, seqlen_k, diagonal,
                  window_left, window_right, softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed,
                  batch_head, dropout_p, full_lo, full_hi,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASK: tl.constexpr,
                  HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, FOLD_SCALE: tl.constexpr,
                  SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                  FP8: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One key block of the online softmax: fold the scores of q against kt (and the values v) into
    (acc, row_max, row_sum)."""
    # (FP8: q and kt are fp8 and the dot runs on the fp8 tensor cores.)
    scores = mma(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), INPUT_PRECISION, UPCAST)
    if not FOLD_SCALE:
        bias = bias_tile(bias_ptrs, m_in, offs_n < seqlen_k, BIAS)
        scores, _ = logits_log2(scores, offs_m[:, None], offs_n[None, :], diagonal, softmax_scale,
                                qk_scale_log2, softcap, slope, bias, SOFTCAP, ALIBI, BIAS)
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
    if (MASK == FULL_MASK) or HAS_LO or HAS_HI or BIAS:
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
    if FP8:
        # P in fp8 against v's fp8 tile (stored keys-contiguous: see the launcher).  Each block's
        # product starts from zero and is added in fp32, so the tensor cores' reduced-precision
        # fp8 accumulation never carries across blocks.
        acc = acc * rescale[:, None] + mma(downcast(p, v.dtype, UPCAST), v,
                                           tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), INPUT_PRECISION,
                                           UPCAST)
    else:
        acc = mma(downcast(p, v.dtype, UPCAST), v, acc * rescale[:, None], INPUT_PRECISION, UPCAST)
    return acc, new_max, row_sum


@triton.jit
def _forward_segment(acc, row_max, row_sum, q, k_base, v_base, kt_tile, v_tile, stride_kn, stride_vn, stride_vd,
                     KDesc, VDesc, k_row, v_row, col, block_table_row, page_size, stride_kb, stride_vb,
                     bias_ptrs, stride_bias_n, m_in, offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
                     softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed, batch_head, dropout_p,
                     start, end, full_lo, full_hi,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, head_dim,
                     BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, MASK: tl.constexpr,
                     HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, FOLD_SCALE: tl.constexpr,
                     SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                     PAGED: tl.constexpr, PAGE_CHUNK: tl.constexpr, FP8: tl.constexpr, TMA: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """The key blocks [start, end) of one tile, loaded by stride increments (dense), TMA boxes (dense,
    blocks inside the sequence) or through the block table (paged)."""
    offs_n_tile = tl.arange(0, BLOCK_N)
    d_in = head_dim_mask(offs_d, head_dim, EVEN_D)
    if PAGED:
        # The block table is read once per chunk of keys and looked up in registers: a lookup
        # loaded inside the key loop would put a load in front of every tile's address, which the
        # software pipeline can only run one block ahead (see paged_kv).
        chunk_keys = chunk_length(page_size, BLOCK_N, PAGE_CHUNK)
        for chunk_start in range(start, end, chunk_keys):
            first_page, pages = load_page_chunk(block_table_row, chunk_start, seqlen_k, page_size, PAGE_CHUNK)
            chunk_bias_ptrs = bias_ptrs + tl.cast(chunk_start, tl.int64) * stride_bias_n
            for start_n in range(chunk_start, tl.minimum(chunk_start + chunk_keys, end), BLOCK_N):
                offs_n = start_n + offs_n_tile
                page, row = paged_position(pages, first_page, offs_n, seqlen_k, page_size)
                kt_ptrs = k_base + (page * stride_kb + row * stride_kn)[None, :] + offs_d[:, None]
                v_ptrs = v_base + (page * stride_vb + row * stride_vn)[:, None] + offs_d[None, :] * stride_vd
                if MASK == FULL_MASK:
                    kt = tl.load(kt_ptrs, mask=d_in[:, None] & (offs_n < seqlen_k)[None, :], other=0.0)
                    v = tl.load(v_ptrs, mask=(offs_n < seqlen_k)[:, None] & d_in[None, :], other=0.0)
                else:
                    kt = tl.load(kt_ptrs, mask=d_in[:, None], other=0.0)
                    v = tl.load(v_ptrs, mask=d_in[None, :], other=0.0)
                acc, row_max, row_sum = _attend_block(
                    acc, row_max, row_sum, q, kt, v, chunk_bias_ptrs, m_in, offs_m, offs_n, start_n, seqlen_k,
                    diagonal, window_left, window_right, softmax_scale, qk_scale_log2, score_scale, softcap,
                    slope, seed, batch_head, dropout_p, full_lo, full_hi, BLOCK_M, BLOCK_N, BLOCK_D, MASK,
                    HAS_LO, HAS_HI, FOLD_SCALE, SOFTCAP, ALIBI, BIAS, DROPOUT, FP8, INPUT_PRECISION, UPCAST)
                chunk_bias_ptrs += BLOCK_N * stride_bias_n
    else:
        kt_ptrs = k_base + tl.cast(start, tl.int64) * stride_kn + kt_tile
        v_ptrs = v_base + tl.cast(start, tl.int64) * stride_vn + v_tile
        bias_ptrs += tl.cast(start, tl.int64) * stride_bias_n
        for start_n in range(start, end, BLOCK_N):
            offs_n = start_n + offs_n_tile
            if TMA and MASK == BAND_MASK:
                # Whole blocks inside the sequence: boxes from the copy engine (see tma).
                kt = tl.trans(KDesc.load([k_row + start_n, col]))
                v = VDesc.load([v_row + start_n, col])
            elif MASK == FULL_MASK:
                kt = tl.load(kt_ptrs, mask=d_in[:, None] & (offs_n < seqlen_k)[None, :], other=0.0)
                v = tl.load(v_ptrs, mask=(offs_n < seqlen_k)[:, None] & d_in[None, :], other=0.0)
            elif not EVEN_D:
                kt = tl.load(kt_ptrs, mask=d_in[:, None], other=0.0)
                v = tl.load(v_ptrs, mask=d_in[None, :], other=0.0)
            else:
                kt = tl.load(kt_ptrs)
                v = tl.load(v_ptrs)
            acc, row_max, row_sum = _attend_block(
                acc, row_max, row_sum, q, kt, v, bias_ptrs, m_in, offs_m, offs_n, start_n, seqlen_k, diagonal,
                window_left, window_right, softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed,
                batch_head, dropout_p, full_lo, full_hi, BLOCK_M, BLOCK_N, BLOCK_D, MASK, HAS_LO, HAS_HI,
                FOLD_SCALE, SOFTCAP, ALIBI, BIAS, DROPOUT, FP8, INPUT_PRECISION, UPCAST)
            if not (TMA and MASK == BAND_MASK):
                kt_ptrs += BLOCK_N * stride_kn
                v_ptrs += BLOCK_N * stride_vn
            bias_ptrs += BLOCK_N * stride_bias_n
    return acc, row_max, row_sum


@compiled.fast_launch
@triton.jit
def attention_forward_kernel(
        Q, K, V, KDesc, VDesc, Out, Lse,
        stride_qb, stride_qm, stride_qh,
        stride_kb, stride_kn, stride_kh,
        stride_vb, stride_vn, stride_vh, stride_vd,
        stride_ob, stride_om, stride_oh,
        stride_lse_b, stride_lse_h,
        CuSeqlensQ, CuSeqlensK, SeqUsedQ, SeqUsedK,
        Alibi, stride_alibi_b, Sinks, DropoutSeed, dropout_p,
        Bias, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
        LeftPadK, KVBatchIdx, BlockTable, stride_block_table, page_size,
        num_splits, stride_o_split, stride_lse_split, Descale, stride_descale,
        num_heads, kv_group_size, max_seqlen_q, max_seqlen_k, num_m_blocks,
        softmax_scale, qk_scale_log2, softcap, window_left, window_right,
        head_dim, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        VARLEN: tl.constexpr, SEQUSED_Q: tl.constexpr, SEQUSED_K: tl.constexpr,
        HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, FOLD_SCALE: tl.constexpr,
        SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, SINKS: tl.constexpr, DROPOUT: tl.constexpr,
        BIAS: tl.constexpr, LEFTPAD: tl.constexpr, KV_BATCH_IDX: tl.constexpr, PAGED: tl.constexpr,
        PAGE_CHUNK: tl.constexpr,
        SPLIT: tl.constexpr, PACK_GQA: tl.constexpr, FP8: tl.constexpr, TMA: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    split = pid * 0
    if SPLIT:
        # Split-KV (decoding): num_splits programs share one tile's keys; each writes a partial
        # output and lse that `combine_splits_kernel` merges.
        split = pid % num_splits
        pid = pid // num_splits
    # With an upper bound on the keys (causal), later query tiles do more work.  With PACK_GQA the
    # tile's rows are (query, head) pairs of one kv head's group: see pack_gqa.
    m_block, batch_head, batch, head = tile_of_program(pid, num_m_blocks, num_heads // PACK_GQA, HAS_HI)
    head_kv = head // kv_group_size
    if PACK_GQA > 1:
        head_kv = head
    start_m = m_block * (BLOCK_M // PACK_GQA)
    q_start, seqlen_q = sequence_extent(CuSeqlensQ, SeqUsedQ, batch, max_seqlen_q, VARLEN, SEQUSED_Q)
    if start_m >= seqlen_q:
        # Tiles past a short sequence's end (the grid is sized for the longest).
        return
    kv_batch, k_start, seqlen_k = key_extent(CuSeqlensK, SeqUsedK, LeftPadK, KVBatchIdx, batch, max_seqlen_k,
                                             VARLEN, SEQUSED_K, LEFTPAD, KV_BATCH_IDX, PAGED)

    offs_m, head_rows, head_col = tile_rows(m_block, head, BLOCK_M, PACK_GQA)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = head_dim_mask(offs_d, head_dim, EVEN_D)
    m_in = offs_m < seqlen_q

    q_ptrs = (Q + batch.to(tl.int64) * stride_qb + head_col.to(tl.int64) * stride_qh
              + (q_start + offs_m).to(tl.int64)[:, None] * stride_qm + offs_d[None, :])
    q = tl.load(q_ptrs, mask=m_in[:, None] & d_in[None, :], other=0.0)
    block_table_row = BlockTable
    if PAGED:
        # stride_kb / stride_vb are the page strides; rows are found through the block table.
        k_base = K + head_kv.to(tl.int64) * stride_kh
        v_base = V + head_kv.to(tl.int64) * stride_vh
        block_table_row = BlockTable + batch.to(tl.int64) * stride_block_table
    else:
        k_base = (K + kv_batch.to(tl.int64) * stride_kb + head_kv.to(tl.int64) * stride_kh
                  + k_start.to(tl.int64) * stride_kn)
        v_base = (V + kv_batch.to(tl.int64) * stride_vb + head_kv.to(tl.int64) * stride_vh
                  + k_start.to(tl.int64) * stride_vn)
    kt_tile = offs_d[:, None] + offs_n[None, :] * stride_kn
    v_tile = offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    # TMA: where this sequence's keys start in the (rows, heads * headdim) views of K and V.
    k_row = (kv_batch * (stride_kb // stride_kn) + k_start).to(tl.int32) if TMA else 0
    v_row = (kv_batch * (stride_vb // stride_vn) + k_start).to(tl.int32) if TMA else 0
    col = head_kv * head_dim

    bias_ptrs = Bias
    if BIAS:
        # Dense only (q_start = k_start = 0); broadcast dims of the bias have stride 0.
        bias_ptrs = (Bias + batch.to(tl.int64) * stride_bias_b + head.to(tl.int64) * stride_bias_h
                     + offs_m.to(tl.int64)[:, None] * stride_bias_m + offs_n[None, :] * stride_bias_n)

    if FP8:
        # q, k, v are float8_e4m3fn with per-(batch, kv head) descale factors: q's and k's fold into
        # the score scale, v's is applied to the output.
        descale_qk = (tl.load(Descale + batch * num_heads // kv_group_size + head_kv)
                      * tl.load(Descale + stride_descale + batch * num_heads // kv_group_size + head_kv))
        softmax_scale = softmax_scale * descale_qk
        qk_scale_log2 = qk_scale_log2 * descale_qk

    # FOLD_SCALE (a positive scale, no soft-capping, ALiBi or bias): the row max is taken on raw
    # scores and scaled once per row.  Otherwise the logits are formed tile-wise first.
    if FOLD_SCALE:
        score_scale = qk_scale_log2
    else:
        score_scale = 1.0
    slope = alibi_slope(Alibi, stride_alibi_b, batch, head_col, ALIBI)
    seed = dropout_seed(DropoutSeed, DROPOUT)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    diagonal = seqlen_k - seqlen_q
    lo, full_lo, full_hi, tail, hi = inner_block_range(start_m, seqlen_k, diagonal, window_left, window_right,
                                                       BLOCK_M // PACK_GQA, BLOCK_N, HAS_LO, HAS_HI)
    band_end = tail
    if SPLIT:
        lo, hi = split_block_range(lo, hi, split, num_splits, BLOCK_N)
        band_end = tl.minimum(tail, hi)
        tail = tl.maximum(tail, lo)
    acc, row_max, row_sum = _forward_segment(
        acc, row_max, row_sum, q, k_base, v_base, kt_tile, v_tile, stride_kn, stride_vn, stride_vd,
        KDesc, VDesc, k_row, v_row, col, block_table_row, page_size, stride_kb, stride_vb,
        bias_ptrs, stride_bias_n, m_in, offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
        softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed, batch_head, dropout_p,
        lo, band_end, full_lo, full_hi, BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, BAND_MASK, HAS_LO, HAS_HI,
        FOLD_SCALE, SOFTCAP, ALIBI, BIAS, DROPOUT, PAGED, PAGE_CHUNK, FP8, TMA, INPUT_PRECISION, UPCAST)
    acc, row_max, row_sum = _forward_segment(
        acc, row_max, row_sum, q, k_base, v_base, kt_tile, v_tile, stride_kn, stride_vn, stride_vd,
        KDesc, VDesc, k_row, v_row, col, block_table_row, page_size, stride_kb, stride_vb,
        bias_ptrs, stride_bias_n, m_in, offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
        softmax_scale, qk_scale_log2, score_scale, softcap, slope, seed, batch_head, dropout_p,
        tail, hi, full_lo, full_hi, BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, FULL_MASK, HAS_LO, HAS_HI,
        FOLD_SCALE, SOFTCAP, ALIBI, BIAS, DROPOUT, PAGED, PAGE_CHUNK, FP8, TMA, INPUT_PRECISION, UPCAST)

    # A row saw nothing when every key was masked (by the band or by -inf in the bias).
    saw_nothing = row_max == float("-inf")
    if SINKS:
        # The sink is one more logit in every row's denominator, with no value vector: it joins
        # as a last key whose value is 0.  Rows that saw no key stay at output 0, lse +inf.
        sink = tl.load(Sinks + head_rows) * LOG2E
        final_max = tl.where(saw_nothing, 0.0, tl.maximum(row_max, sink))
        rescale = tl.math.exp2(row_max - final_max)
        acc = acc * rescale[:, None]
        row_sum = tl.where(saw_nothing, 0.0, row_sum * rescale + tl.math.exp2(sink - final_max))
        row_max = final_max
    row_sum = tl.where(row_sum == 0.0, 1.0, row_sum)
    out = acc / row_sum[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    if FP8:
        out = out * tl.load(Descale + 2 * stride_descale + batch * num_heads // kv_group_size + head_kv)
    lse = tl.where(saw_nothing, float("inf"), (row_max + tl.math.log2(row_sum)) * LN2)

    o_ptrs = (Out + split.to(tl.int64) * stride_o_split
              + batch.to(tl.int64) * stride_ob + head_col.to(tl.int64) * stride_oh
              + (q_start + offs_m).to(tl.int64)[:, None] * stride_om + offs_d[None, :])
    if not SPLIT:
        out = downcast(out, Out.dtype.element_ty, UPCAST)
    # Split partials stay float32 (Out is the split workspace then).
    tl.store(o_ptrs, out, mask=m_in[:, None] & d_in[None, :])
    # softmax_lse is (batch, heads, seqlen_q), or (heads, total_q) for varlen (batch stride 0).
    lse_ptrs = (Lse + split.to(tl.int64) * stride_lse_split
                + batch.to(tl.int64) * stride_lse_b + head_rows.to(tl.int64) * stride_lse_h
                + q_start.to(tl.int64) + offs_m)
    tl.store(lse_ptrs, lse, mask=m_in)
