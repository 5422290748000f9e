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
