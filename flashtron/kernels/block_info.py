"""Which blocks a tile visits, and the mask inside a block.

Every visibility rule flashtron supports is a band around a diagonal: an
"outer" index o (the rows of the tile a program owns) sees an "inner" index i
(the blocks it loops over) iff

    o + diagonal - lo_extent <= i <= o + diagonal + hi_extent,   0 <= i < inner_len

where each extent is unbounded unless its HAS_ flag is set.  In the forward
pass and the dQ pass the outer index is the query and the inner the key, with
diagonal = seqlen_k - seqlen_q (causal masks align bottom-right, as in
flash-attn 2.1+), lo_extent = window_left and hi_extent = window_right
(causal is window_right = 0).  The dK/dV pass swaps the roles: keys are outer,
queries inner, diagonal = seqlen_q - seqlen_k, lo_extent = window_right and
hi_extent = window_left.

The inner range [lo, hi) runs in two loops.  [lo, tail) holds the blocks that
lie wholly inside the sequence: its loads need no bounds checks, and a block
gets the band mask only where some pair in it is outside the band (before
full_lo or from full_hi on; a runtime scalar test per block, so the hot
blocks between pay nothing and the loop pipelines as one).  [tail, hi) is at
most the one block holding the sequence's end, with every check.  Blocks
outside [lo, hi) are never visited.
"""

import triton
import triton.language as tl

# Which mask a loop applies: the band only, where a block needs it (inside the sequence), or
# every check (the block holding the sequence's end).
BAND_MASK = tl.constexpr(1)
FULL_MASK = tl.constexpr(2)


@triton.jit
def inner_block_range(outer_start, inner_len, diagonal, lo_extent, hi_extent,
                      BLOCK_OUTER: tl.constexpr, BLOCK_INNER: tl.constexpr,
                      HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    """Return (lo, full_lo, full_hi, tail, hi): every block in [lo, tail) is inside the sequence, and
    blocks in [full_lo, full_hi) need no mask.  All are multiples of BLOCK_INNER except hi."""
    outer_last = outer_start + BLOCK_OUTER - 1
    lo = 0
    hi = inner_len
    in_sequence = (inner_len // BLOCK_INNER) * BLOCK_INNER
    full_hi = in_sequence
    full_lo = 0
    if HAS_LO:
        first_visible = tl.maximum(outer_start + diagonal - lo_extent, 0)
        lo = (first_visible // BLOCK_INNER) * BLOCK_INNER
        # The first block that every row of the tile sees entirely.
        all_see_from = tl.maximum(outer_last + diagonal - lo_extent, 0)
        full_lo = tl.cdiv(all_see_from, BLOCK_INNER) * BLOCK_INNER
    if HAS_HI:
        hi = tl.minimum(hi, tl.maximum(outer_last + diagonal + hi_extent + 1, 0))
        # Blocks ending at or before the first row's limit are visible to all rows.
        all_see_until = tl.maximum(outer_start + diagonal + hi_extent + 1, 0)
        full_hi = tl.minimum(full_hi, (all_see_until // BLOCK_INNER) * BLOCK_INNER)
    hi = tl.maximum(hi, lo)
    tail = tl.minimum(tl.maximum(in_sequence, lo), hi)
    # full_lo > full_hi (a band narrower than a block): every block gets the mask.
    return lo, full_lo, full_hi, tail, hi


@triton.jit
def visible(offs_outer, offs_inner, inner_len, diagonal, lo_extent, hi_extent,
            HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, CHECK_LEN: tl.constexpr = True):
    """Boolean (BLOCK_OUTER, BLOCK_INNER) tile: which pairs take part in the softmax."""
    keep = tl.full([offs_outer.shape[0], offs_inner.shape[0]], 1, tl.int1)
    if CHECK_LEN:
        keep = keep & (offs_inner[None, :] < inner_len)
    distance = offs_inner[None, :] - offs_outer[:, None] - diagonal
    if HAS_LO:
        keep = keep & (distance >= -lo_extent)
    if HAS_HI:
        keep = keep & (distance <= hi_extent)
    return keep


@triton.jit
def head_dim_mask(offs_d, head_dim, EVEN_D: tl.constexpr):
    """Which columns of a padded head-dim tile are real: a constant all-true mask when
    the head dim fills the tile, so the compiler drops it."""
    if EVEN_D:
        return tl.full(offs_d.shape, 1, tl.int1)
    else:
        return offs_d < head_dim


@triton.jit
def split_block_range(lo, hi, split, num_splits, BLOCK_INNER: tl.constexpr):
    """Split `split` of num_splits of the inner range [lo, hi): whole blocks, as even as can be;
    a split past the end gets an empty range."""
    blocks_per_split = tl.cdiv(tl.cdiv(hi - lo, BLOCK_INNER), num_splits)
    split_lo = tl.minimum(lo + split * blocks_per_split * BLOCK_INNER, hi)
    split_hi = tl.minimum(split_lo + blocks_per_split * BLOCK_INNER, hi)
    return split_lo, split_hi
