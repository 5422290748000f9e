"""Paged keys and values: where key position p of a sequence lives.

A paged cache holds K and V as (num_pages, page_size, heads, headdim); the
sequence of batch row b occupies pages block_table[b, 0], block_table[b, 1],
..., so position p is row p % page_size of page block_table[b, p // page_size].
Any page size works (1 included): the split is an integer division per key
of the tile, and a tile may span several pages.  Dense tensors keep their
pointer increments; only PAGED tiles recompute their row offsets per block.
"""

import triton
import triton.language as tl


@triton.jit
def paged_position(block_table_row, offs_n, seqlen_k, page_size):
    """(page, row in page), both int64, of key positions offs_n.  Positions at or past seqlen_k map
    to row 0 of the sequence's first page (their loads are masked or their scores discarded)."""
    in_range = offs_n < seqlen_k
    page = tl.load(block_table_row + offs_n // page_size, mask=in_range, other=0).to(tl.int64)
    slot = tl.where(in_range, offs_n % page_size, 0).to(tl.int64)
    return page, slot
