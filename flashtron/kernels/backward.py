"""Backward kernels: recompute the probabilities from the saved log-sum-exp.

Three launches, none of which allocates anything of size seqlen_q x seqlen_k
(dense or variable-length layouts, as in the forward; see seqlen_info):
  1. `attention_backward_preprocess`: delta_i = sum_d dO_id * O_id, per query row.
  2. `attention_backward_dkdv`: one program per (batch, kv head, key tile) holds
     K and V in registers and loops over the query tiles of every query head of
     its GQA group, so dK and dV are summed over the group without atomics.
  3. `attention_backward_dq`: one program per (batch, head, query tile) loops
     over key tiles.
With P = exp(S - lse), dV = P^T dO, dP = dO V^T, dS = P * (dP - delta),
dK = scale * dS^T Q, dQ = scale * dS K.  Every output element is written by one
program in a fixed order, so the backward is deterministic.  hopper_backward
shares the preprocess and ends with `attention_backward_postprocess`, which
scales and rounds the float32 dQ its reduce-adds summed.

`softmax_lse` arrives in natural log and is moved to base 2 once per row; a
row that saw no key has lse +inf, so its probabilities are exactly 0.
"""

import triton
import triton.language as tl

from flashtron.kernels import compiled
from flashtron.kernels.block_info import BAND_MASK, FULL_MASK, head_dim_mask, inner_block_range, visible
from flashtron.kernels.dropout import dropout_keep, dropout_seed
from flashtron.kernels.precision import downcast, mma
from flashtron.kernels.score_mod import LOG2E, alibi_slope, bias_tile, logits_log2
from flashtron.kernels.seqlen_info import sequence_extent
from flashtron.kernels.tile_scheduler import tile_of_program


PREPROCESS_ROWS = 64  # query rows per program of attention_backward_preprocess, in either backward


@compiled.fast_launch
@triton.jit
def attention_backward_preprocess(
        Out, DOut, Delta,
        stride_ob, stride_om, stride_oh,
        stride_dob, stride_dom, stride_doh,
        stride_lse_b, stride_lse_h, CuSeqlensQ, SeqUsedQ,
        num_heads, max_seqlen_q, num_m_blocks,
        head_dim, DqAccum, stride_ab, stride_am, stride_ah, TileCounter,
        BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr,
        VARLEN: tl.constexpr, SEQUSED_Q: tl.constexpr, ZERO_DQ: tl.constexpr):
    """Delta = rowsum(dO * O) in float32, softmax_lse's layout.  ZERO_DQ (dense calls of the Hopper backward):
    also zero the same rows of its float32 dQ sums, DqAccum (B, Sq, H, head_dim), and its tile counter, which
    saves a launch and a pass of its own."""
    m_block, batch_head, batch, head = tile_of_program(tl.program_id(0), num_m_blocks, num_heads, False)
    if ZERO_DQ:
        if tl.program_id(0) == 0:
            tl.store(TileCounter, 0)
    q_start, seqlen_q = sequence_extent(CuSeqlensQ, SeqUsedQ, batch, max_seqlen_q, VARLEN, SEQUSED_Q)
    if m_block * BLOCK_M >= seqlen_q:
        return
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < seqlen_q)[:, None] & head_dim_mask(offs_d, head_dim, EVEN_D)[None, :]
    rows = (q_start + offs_m).to(tl.int64)[:, None]
    if ZERO_DQ:
        tl.store(DqAccum + batch.to(tl.int64) * stride_ab + head.to(tl.int64) * stride_ah + rows * stride_am
                 + offs_d[None, :], tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), mask=mask)
    o = tl.load(Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
                + rows * stride_om + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DOut + batch.to(tl.int64) * stride_dob + head.to(tl.int64) * stride_doh
                 + rows * stride_dom + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + batch.to(tl.int64) * stride_lse_b + head.to(tl.int64) * stride_lse_h + q_start.to(tl.int64)
             + offs_m, delta, mask=offs_m < seqlen_q)


@compiled.fast_launch
@triton.jit
def attention_backward_postprocess(DqAccum, Dq, numel, softmax_scale, row_width, seqlen, stride_row, stride_batch,
                                   BLOCK: tl.constexpr, UPCAST: tl.constexpr, STRIDED: tl.constexpr):
    """dQ = softmax_scale * dq_accum, rounded to dQ's dtype: the Hopper kernel's float32 sums, flat (contiguous
    (batch, seqlen, heads, headdim)).  dQ is contiguous too, or with STRIDED its rows of row_width elements
    (heads side by side) lie stride_row apart and its batch entries stride_batch apart: a part of a packed
    gradient, such as dq inside one dqkv.  One pass that reads 4 bytes and writes 2 per element (torch.mul
    with a 16-bit out= ran 1.3x slower, BENCHMARKS.md session 11)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    dq = tl.load(DqAccum + offs, mask=inside) * softmax_scale
    if STRIDED:
        row = offs // row_width
        target = (row // seqlen) * stride_batch + (row % seqlen) * stride_row + offs % row_width
    else:
        target = offs
    tl.store(Dq + target, downcast(dq, Dq.dtype.element_ty, UPCAST), mask=inside)


@triton.jit
def _dkdv_segment(dk, dv, k, v, q_base, do_base, lse_base, delta_base, qt_tile, do_tile,
                  stride_qm, stride_dom, QDesc, DODesc, q_row, do_row, col,
                  bias_ptrs, dbias_ptrs, stride_bias_m, stride_dbias_m, n_in,
                  offs_n, key_start, offs_d, seqlen_q, diagonal, window_left, window_right,
                  softmax_scale, qk_scale_log2, softcap, slope, seed, batch_head, dropout_p, start, end,
                  full_lo, full_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, head_dim,
                  BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, MASK: tl.constexpr,
                  HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                  BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr, DROPOUT: tl.constexpr, TMA: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Tiles here are transposed: rows are keys (this program's), columns are queries.
    offs_m_tile = tl.arange(0, BLOCK_M)
    d_in = head_dim_mask(offs_d, head_dim, EVEN_D)
    qt_ptrs = q_base + tl.cast(start, tl.int64) * stride_qm + qt_tile
    do_ptrs = do_base + tl.cast(start, tl.int64) * stride_dom + do_tile
    bias_ptrs += tl.cast(start, tl.int64) * stride_bias_m
    dbias_ptrs += tl.cast(start, tl.int64) * stride_dbias_m
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + offs_m_tile
        if MASK == FULL_MASK:
            m_in = offs_m < seqlen_q
            qt = tl.load(qt_ptrs, mask=d_in[:, None] & m_in[None, :], other=0.0)
            do = tl.load(do_ptrs, mask=m_in[:, None] & d_in[None, :], other=0.0)
            lse = tl.load(lse_base + offs_m, mask=m_in, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=m_in, other=0.0)
        else:
            if TMA:
                # Whole blocks inside the sequence: boxes from the copy engine (see tma).
                qt = tl.trans(QDesc.load([q_row + start_m, col]))
                do = DODesc.load([do_row + start_m, col])
            elif not EVEN_D:
                qt = tl.load(qt_ptrs, mask=d_in[:, None], other=0.0)
                do = tl.load(do_ptrs, mask=d_in[None, :], other=0.0)
            else:
                qt = tl.load(qt_ptrs)
                do = tl.load(do_ptrs)
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        raw_t = mma(k, qt, tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), INPUT_PRECISION, UPCAST)
        m_in = offs_m < seqlen_q
        bias_t = bias_tile(bias_ptrs, n_in, m_in, BIAS)
        # key_offset = seqlen_k - seqlen_q = -diagonal: ALiBi's distance is in the forward's terms.
        logits_t, cap_slope_t = logits_log2(raw_t, offs_m[None, :], offs_n[:, None], -diagonal, softmax_scale,
                                            qk_scale_log2, softcap, slope, bias_t, SOFTCAP, ALIBI, BIAS)
        p_t = tl.math.exp2(logits_t - (lse * LOG2E)[None, :])
        # Keys are the outer index: the band's bounds swap sides.
        if MASK == FULL_MASK:
            keep = visible(offs_n, offs_m, seqlen_q, diagonal, window_right, window_left, HAS_HI, HAS_LO)
            p_t = tl.where(keep, p_t, 0.0)
        elif HAS_LO or HAS_HI:
            if (start_m < full_lo) | (start_m >= full_hi):
                keep = visible(offs_n, offs_m, seqlen_q, diagonal, window_right, window_left, HAS_HI, HAS_LO, False)
                p_t = tl.where(keep, p_t, 0.0)
        dropped_p_t = p_t
        if DROPOUT:
            # The forward's mask, regenerated in the forward's orientation and transposed.
            keep_t = tl.trans(dropout_keep(seed, batch_head, offs_m, key_start, dropout_p, BLOCK_N))
            dropped_p_t = tl.where(keep_t, p_t * (1.0 / (1.0 - dropout_p)), 0.0)
        dv = mma(downcast(dropped_p_t, do.dtype, UPCAST), do, dv, INPUT_PRECISION, UPCAST)
        dp_t = mma(v, tl.trans(do), tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32), INPUT_PRECISION, UPCAST)
        if DROPOUT:
            dp_t = tl.where(keep_t, dp_t * (1.0 / (1.0 - dropout_p)), 0.0)
        ds_t = p_t * (dp_t - delta[None, :])
        if BIAS_GRAD:
            # d loss / d bias is the gradient of the logit itself (before soft-capping's factor).
            tl.store(dbias_ptrs, ds_t, mask=n_in[:, None] & m_in[None, :])
        if SOFTCAP:
            ds_t = ds_t * cap_slope_t
        dk = mma(downcast(ds_t, qt.dtype, UPCAST), tl.trans(qt), dk, INPUT_PRECISION, UPCAST)
        if not (TMA and MASK == BAND_MASK):
            qt_ptrs += BLOCK_M * stride_qm
            do_ptrs += BLOCK_M * stride_dom
        bias_ptrs += BLOCK_M * stride_bias_m
        dbias_ptrs += BLOCK_M * stride_dbias_m
    return dk, dv


# A one-row query (max_seqlen_q == 1, specialised as a constant) made ptxas 13.0 crash on this kernel's
# TMA variant (sm_90a, Triton 3.6); the length stays a runtime value.
@compiled.fast_launch
@triton.jit(do_not_specialize=["max_seqlen_q"])
def attention_backward_dkdv(
        Q, K, V, DOut, QDesc, DODesc, Lse, Delta, DK, DV,
        stride_qb, stride_qm, stride_qh,
        stride_kb, stride_kn, stride_kh,
        stride_vb, stride_vn, stride_vh,
        stride_dob, stride_dom, stride_doh,
        stride_dkb, stride_dkn, stride_dkh,
        stride_dvb, stride_dvn, stride_dvh,
        stride_lse_b, stride_lse_h,
        CuSeqlensQ, CuSeqlensK, SeqUsedQ, SeqUsedK,
        Alibi, stride_alibi_b, DropoutSeed, dropout_p,
        Bias, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
        DBias, stride_dbias_b, stride_dbias_h, stride_dbias_m, stride_dbias_n,
        num_heads, num_heads_kv, kv_group_size, max_seqlen_q, max_seqlen_k, num_n_blocks,
        softmax_scale, qk_scale_log2, softcap, window_left, window_right,
        head_dim, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        VARLEN: tl.constexpr, SEQUSED_Q: tl.constexpr, SEQUSED_K: tl.constexpr,
        HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
        BIAS: tl.constexpr, BIAS_GRAD: tl.constexpr, DROPOUT: tl.constexpr, TMA: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # Under causal (HAS_HI) early key tiles see the most queries and already come first;
    # a left window bound (HAS_LO) alone makes the late ones heavy.
    n_block, _, batch, head_kv = tile_of_program(tl.program_id(0), num_n_blocks, num_heads_kv, HAS_LO)
    start_n = n_block * BLOCK_N
    k_start, seqlen_k = sequence_extent(CuSeqlensK, SeqUsedK, batch, max_seqlen_k, VARLEN, SEQUSED_K)
    if start_n >= seqlen_k:
        return
    q_start, seqlen_q = sequence_extent(CuSeqlensQ, SeqUsedQ, batch, max_seqlen_q, VARLEN, SEQUSED_Q)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_in = offs_n < seqlen_k
    kv_mask = n_in[:, None] & head_dim_mask(offs_d, head_dim, EVEN_D)[None, :]
    row_tile_k = tl.arange(0, BLOCK_N)[:, None]
    key_rows = (k_start + start_n).to(tl.int64)
    k = tl.load(K + batch.to(tl.int64) * stride_kb + head_kv.to(tl.int64) * stride_kh
                + key_rows * stride_kn + row_tile_k * stride_kn + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(V + batch.to(tl.int64) * stride_vb + head_kv.to(tl.int64) * stride_vh
                + key_rows * stride_vn + row_tile_k * stride_vn + offs_d[None, :],
                mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    seed = dropout_seed(DropoutSeed, DROPOUT)
    qt_tile = offs_d[:, None] + offs_m[None, :] * stride_qm
    do_tile = offs_m[:, None] * stride_dom + offs_d[None, :]

    # Keys are the outer index here: the band's bounds swap sides.
    diagonal = seqlen_q - seqlen_k
    lo, full_lo, full_hi, tail, hi = inner_block_range(start_n, seqlen_q, diagonal, window_right, window_left,
                                                       BLOCK_N, BLOCK_M, HAS_HI, HAS_LO)
    # TMA: where this sequence's queries start in the (rows, heads * headdim) views of Q and dO.
    q_row = (batch * (stride_qb // stride_qm) + q_start).to(tl.int32) if TMA else 0
    do_row = (batch * (stride_dob // stride_dom) + q_start).to(tl.int32) if TMA else 0
    for group_member in range(kv_group_size):
        head = head_kv * kv_group_size + group_member
        batch_head = batch * num_heads + head
        slope = alibi_slope(Alibi, stride_alibi_b, batch, head, ALIBI)
        q_base = (Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
                  + q_start.to(tl.int64) * stride_qm)
        do_base = (DOut + batch.to(tl.int64) * stride_dob + head.to(tl.int64) * stride_doh
                   + q_start.to(tl.int64) * stride_dom)
        row_stats = batch.to(tl.int64) * stride_lse_b + head.to(tl.int64) * stride_lse_h + q_start.to(tl.int64)
        lse_base = Lse + row_stats
        delta_base = Delta + row_stats
        bias_ptrs = Bias
        dbias_ptrs = DBias
        if BIAS:
            # Dense only; transposed tiles (keys x queries), starting at query 0.
            bias_ptrs = (Bias + batch.to(tl.int64) * stride_bias_b + head.to(tl.int64) * stride_bias_h
                         + offs_n.to(tl.int64)[:, None] * stride_bias_n + offs_m[None, :] * stride_bias_m)
        if BIAS_GRAD:
            dbias_ptrs = (DBias + batch.to(tl.int64) * stride_dbias_b + head.to(tl.int64) * stride_dbias_h
                          + offs_n.to(tl.int64)[:, None] * stride_dbias_n + offs_m[None, :] * stride_dbias_m)
        dk, dv = _dkdv_segment(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, qt_tile, do_tile, stride_qm, stride_dom,
            QDesc, DODesc, q_row, do_row, head * head_dim, bias_ptrs, dbias_ptrs, stride_bias_m, stride_dbias_m, n_in,
            offs_n, start_n, offs_d, seqlen_q, diagonal, window_left, window_right,
            softmax_scale, qk_scale_log2, softcap, slope, seed, batch_head, dropout_p, lo, tail, full_lo, full_hi,
            BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, BAND_MASK, HAS_LO, HAS_HI, SOFTCAP, ALIBI, BIAS, BIAS_GRAD,
            DROPOUT, TMA, INPUT_PRECISION, UPCAST)
        dk, dv = _dkdv_segment(
            dk, dv, k, v, q_base, do_base, lse_base, delta_base, qt_tile, do_tile, stride_qm, stride_dom,
            QDesc, DODesc, q_row, do_row, head * head_dim, bias_ptrs, dbias_ptrs, stride_bias_m, stride_dbias_m, n_in,
            offs_n, start_n, offs_d, seqlen_q, diagonal, window_left, window_right,
            softmax_scale, qk_scale_log2, softcap, slope, seed, batch_head, dropout_p, tail, hi, full_lo, full_hi,
            BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, FULL_MASK, HAS_LO, HAS_HI, SOFTCAP, ALIBI, BIAS, BIAS_GRAD,
            DROPOUT, TMA, INPUT_PRECISION, UPCAST)

    dk = dk * softmax_scale
    tl.store(DK + batch.to(tl.int64) * stride_dkb + head_kv.to(tl.int64) * stride_dkh
             + key_rows * stride_dkn + row_tile_k * stride_dkn + offs_d[None, :],
             downcast(dk, DK.dtype.element_ty, UPCAST), mask=kv_mask)
    tl.store(DV + batch.to(tl.int64) * stride_dvb + head_kv.to(tl.int64) * stride_dvh
             + key_rows * stride_dvn + row_tile_k * stride_dvn + offs_d[None, :],
             downcast(dv, DV.dtype.element_ty, UPCAST), mask=kv_mask)


@triton.jit
def _dq_segment(dq, q, do, lse_log2, delta, k_base, v_base, kt_tile, vt_tile, stride_kn, stride_vn,
                KDesc, VDesc, k_row, v_row, col,
                bias_ptrs, stride_bias_n, m_in, offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
                softmax_scale, qk_scale_log2, softcap, slope, seed, batch_head, dropout_p, start, end,
                full_lo, full_hi, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, head_dim,
                BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, MASK: tl.constexpr,
                HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                BIAS: tl.constexpr, DROPOUT: tl.constexpr, TMA: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                UPCAST: tl.constexpr):
    offs_n_tile = tl.arange(0, BLOCK_N)
    d_in = head_dim_mask(offs_d, head_dim, EVEN_D)
    kt_ptrs = k_base + tl.cast(start, tl.int64) * stride_kn + kt_tile
    vt_ptrs = v_base + tl.cast(start, tl.int64) * stride_vn + vt_tile
    bias_ptrs += tl.cast(start, tl.int64) * stride_bias_n
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + offs_n_tile
        if TMA and MASK == BAND_MASK:
            # Whole blocks inside the sequence: boxes from the copy engine (see tma).
            kt = tl.trans(KDesc.load([k_row + start_n, col]))
            vt = tl.trans(VDesc.load([v_row + start_n, col]))
        elif MASK == FULL_MASK:
            tile_mask = d_in[:, None] & (offs_n < seqlen_k)[None, :]
            kt = tl.load(kt_ptrs, mask=tile_mask, other=0.0)
            vt = tl.load(vt_ptrs, mask=tile_mask, other=0.0)
        elif not EVEN_D:
            kt = tl.load(kt_ptrs, mask=d_in[:, None], other=0.0)
            vt = tl.load(vt_ptrs, mask=d_in[:, None], other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        raw = mma(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), INPUT_PRECISION, UPCAST)
        bias = bias_tile(bias_ptrs, m_in, offs_n < seqlen_k, BIAS)
        logits, cap_slope = logits_log2(raw, offs_m[:, None], offs_n[None, :], diagonal, softmax_scale,
                                        qk_scale_log2, softcap, slope, bias, SOFTCAP, ALIBI, BIAS)
        p = tl.math.exp2(logits - lse_log2[:, None])
        if MASK == FULL_MASK:
            keep = visible(offs_m, offs_n, seqlen_k, diagonal, window_left, window_right, HAS_LO, HAS_HI)
            p = tl.where(keep, p, 0.0)
        elif HAS_LO or HAS_HI:
            if (start_n < full_lo) | (start_n >= full_hi):
                keep = visible(offs_m, offs_n, seqlen_k, diagonal, window_left, window_right, HAS_LO, HAS_HI, False)
                p = tl.where(keep, p, 0.0)
        dp = mma(do, vt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), INPUT_PRECISION, UPCAST)
        if DROPOUT:
            keep = dropout_keep(seed, batch_head, offs_m, start_n, dropout_p, BLOCK_N)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * cap_slope
        dq = mma(downcast(ds, kt.dtype, UPCAST), tl.trans(kt), dq, INPUT_PRECISION, UPCAST)
        if not (TMA and MASK == BAND_MASK):
            kt_ptrs += BLOCK_N * stride_kn
            vt_ptrs += BLOCK_N * stride_vn
        bias_ptrs += BLOCK_N * stride_bias_n
    return dq


@compiled.fast_launch
@triton.jit
def attention_backward_dq(
        Q, K, V, DOut, KDesc, VDesc, Lse, Delta, DQ,
        stride_qb, stride_qm, stride_qh,
        stride_kb, stride_kn, stride_kh,
        stride_vb, stride_vn, stride_vh,
        stride_dob, stride_dom, stride_doh,
        stride_dqb, stride_dqm, stride_dqh,
        stride_lse_b, stride_lse_h,
        CuSeqlensQ, CuSeqlensK, SeqUsedQ, SeqUsedK,
        Alibi, stride_alibi_b, DropoutSeed, dropout_p,
        Bias, stride_bias_b, stride_bias_h, stride_bias_m, stride_bias_n,
        num_heads, kv_group_size, max_seqlen_q, max_seqlen_k, num_m_blocks,
        softmax_scale, qk_scale_log2, softcap, window_left, window_right,
        head_dim, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        VARLEN: tl.constexpr, SEQUSED_Q: tl.constexpr, SEQUSED_K: tl.constexpr,
        HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
        BIAS: tl.constexpr, DROPOUT: tl.constexpr, TMA: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        UPCAST: tl.constexpr):
    m_block, batch_head, batch, head = tile_of_program(tl.program_id(0), num_m_blocks, num_heads, HAS_HI)
    head_kv = head // kv_group_size
    start_m = m_block * BLOCK_M
    q_start, seqlen_q = sequence_extent(CuSeqlensQ, SeqUsedQ, batch, max_seqlen_q, VARLEN, SEQUSED_Q)
    if start_m >= seqlen_q:
        return
    k_start, seqlen_k = sequence_extent(CuSeqlensK, SeqUsedK, batch, max_seqlen_k, VARLEN, SEQUSED_K)

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < seqlen_q
    row_mask = m_in[:, None] & head_dim_mask(offs_d, head_dim, EVEN_D)[None, :]
    row_tile = tl.arange(0, BLOCK_M)[:, None]
    query_rows = (q_start + start_m).to(tl.int64)
    q = tl.load(Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
                + query_rows * stride_qm + row_tile * stride_qm + offs_d[None, :],
                mask=row_mask, other=0.0)
    do = tl.load(DOut + batch.to(tl.int64) * stride_dob + head.to(tl.int64) * stride_doh
                 + query_rows * stride_dom + row_tile * stride_dom + offs_d[None, :],
                 mask=row_mask, other=0.0)
    row_stats = batch.to(tl.int64) * stride_lse_b + head.to(tl.int64) * stride_lse_h + q_start.to(tl.int64)
    lse_log2 = tl.load(Lse + row_stats + offs_m, mask=m_in, other=0.0) * LOG2E
    delta = tl.load(Delta + row_stats + offs_m, mask=m_in, other=0.0)
    k_base = (K + batch.to(tl.int64) * stride_kb + head_kv.to(tl.int64) * stride_kh
              + k_start.to(tl.int64) * stride_kn)
    v_base = (V + batch.to(tl.int64) * stride_vb + head_kv.to(tl.int64) * stride_vh
              + k_start.to(tl.int64) * stride_vn)
    kt_tile = offs_d[:, None] + offs_n[None, :] * stride_kn
    vt_tile = offs_d[:, None] + offs_n[None, :] * stride_vn
    # TMA: where this sequence's keys start in the (rows, heads * headdim) views of K and V.
    k_row = (batch * (stride_kb // stride_kn) + k_start).to(tl.int32) if TMA else 0
    v_row = (batch * (stride_vb // stride_vn) + k_start).to(tl.int32) if TMA else 0

    slope = alibi_slope(Alibi, stride_alibi_b, batch, head, ALIBI)
    seed = dropout_seed(DropoutSeed, DROPOUT)
    bias_ptrs = Bias
    if BIAS:
        bias_ptrs = (Bias + batch.to(tl.int64) * stride_bias_b + head.to(tl.int64) * stride_bias_h
                     + offs_m.to(tl.int64)[:, None] * stride_bias_m + offs_n[None, :] * stride_bias_n)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    diagonal = seqlen_k - seqlen_q
    lo, full_lo, full_hi, tail, hi = inner_block_range(start_m, seqlen_k, diagonal, window_left, window_right,
                                                       BLOCK_M, BLOCK_N, HAS_LO, HAS_HI)
    dq = _dq_segment(dq, q, do, lse_log2, delta, k_base, v_base, kt_tile, vt_tile, stride_kn, stride_vn,
                     KDesc, VDesc, k_row, v_row, head_kv * head_dim,
                     bias_ptrs, stride_bias_n, m_in, offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
                     softmax_scale, qk_scale_log2, softcap, slope, seed, batch_head, dropout_p, lo, tail,
                     full_lo, full_hi, BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, BAND_MASK, HAS_LO, HAS_HI,
                     SOFTCAP, ALIBI, BIAS, DROPOUT, TMA, INPUT_PRECISION, UPCAST)
    dq = _dq_segment(dq, q, do, lse_log2, delta, k_base, v_base, kt_tile, vt_tile, stride_kn, stride_vn,
                     KDesc, VDesc, k_row, v_row, head_kv * head_dim,
                     bias_ptrs, stride_bias_n, m_in, offs_m, offs_d, seqlen_k, diagonal, window_left, window_right,
                     softmax_scale, qk_scale_log2, softcap, slope, seed, batch_head, dropout_p, tail, hi,
                     full_lo, full_hi, BLOCK_M, BLOCK_N, head_dim, BLOCK_D, EVEN_D, FULL_MASK, HAS_LO, HAS_HI,
                     SOFTCAP, ALIBI, BIAS, DROPOUT, TMA, INPUT_PRECISION, UPCAST)
    dq = dq * softmax_scale
    tl.store(DQ + batch.to(tl.int64) * stride_dqb + head.to(tl.int64) * stride_dqh
             + query_rows * stride_dqm + row_tile * stride_dqm + offs_d[None, :],
             downcast(dq, DQ.dtype.element_ty, UPCAST), mask=row_mask)
