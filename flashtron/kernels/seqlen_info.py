"""Where a sequence starts and how long it is, read once per tile.

Dense tensors are (batch, seqlen, heads, headdim): every sequence starts at
row 0 of its batch entry and has the tensor's length.  Variable-length
(VARLEN) tensors are packed (total, heads, headdim) with cumulative lengths
cu_seqlens (batch + 1): sequence b holds rows [cu_seqlens[b], cu_seqlens[b+1]),
and the launcher passes a batch stride of 0.  Either way, SEQUSED replaces the
length by seqused[b] (FlashAttention-3's seqused_q / seqused_k: only the first
seqused[b] rows take part; a KV cache's filled length is the same thing).
"""

import triton
import triton.language as tl


@triton.jit
def sequence_extent(CuSeqlens, SeqUsed, batch, max_seqlen, VARLEN: tl.constexpr, SEQUSED: tl.constexpr):
    """Return (row offset of the sequence in the packed tensor, its length)."""
    if VARLEN:
        start = tl.load(CuSeqlens + batch)
        seqlen = tl.load(CuSeqlens + batch + 1) - start
    else:
        start = batch * 0
        seqlen = max_seqlen
    if SEQUSED:
        seqlen = tl.load(SeqUsed + batch)
    return start, seqlen


@triton.jit
def key_extent(CuSeqlensK, SeqUsedK, LeftPadK, KVBatchIdx, batch, max_seqlen_k,
               VARLEN: tl.constexpr, SEQUSED_K: tl.constexpr, LEFTPAD: tl.constexpr, KV_BATCH_IDX: tl.constexpr,
               PAGED: tl.constexpr):
    """Return (key batch row, first key row, number of keys) of sequence `batch`.

    On top of sequence_extent: a KV cache's batch row may be another (KV_BATCH_IDX, flash-attn's
    cache_batch_idx), its first LeftPadK[batch] rows may be padding (LEFTPAD, cache_leftpad: the
    sequence is rows [leftpad, seqused)), and a paged cache numbers keys from 0 in each sequence's
    pages (PAGED: the row offset is the logical position; see paged_kv)."""
    k_start, seqlen_k = sequence_extent(CuSeqlensK, SeqUsedK, batch, max_seqlen_k, VARLEN, SEQUSED_K)
    kv_batch = batch
    if KV_BATCH_IDX:
        kv_batch = tl.load(KVBatchIdx + batch)
    if PAGED:
        k_start = k_start * 0
    if LEFTPAD:
        # Clamped to [0, seqlen_k]: the host checks the values only where that is cheap (set_sequence_checks), and
        # a bad one must not move the reads out of the cache's row.
        pad = tl.minimum(tl.maximum(tl.load(LeftPadK + batch), 0), seqlen_k)
        k_start = k_start + pad
        seqlen_k = seqlen_k - pad
    return kv_batch, k_start, seqlen_k
