"""Paged keys and values: where key position p of a sequence lives.

A paged cache holds K and V as (num_pages, page_size, heads, headdim); the
sequence of batch row b occupies pages block_table[b, 0], block_table[b, 1],
..., so position p is row p % page_size of page block_table[b, p // page_size].
Any page size works (1 included): the split is an integer division per key
of the tile, and a tile may span several pages.

The key loop reads the block table in chunks: up to PAGE_CHUNK page numbers
are loaded once, and each key tile looks its pages up in registers
(`tl.gather`).  A block-table load inside the loop would sit in front of
every tile's addresses, and Triton's software pipeline then waits for all
outstanding copies at the top of each iteration, so it can read only one tile
ahead (measured: 0.85x of the contiguous cache's bandwidth; BENCHMARKS.md).
With the lookups in registers the tile loads pipeline as deep as dense ones.
"""

import triton
import triton.language as tl

# Page numbers held in registers per chunk of keys (4 int32 per thread at 4 warps); the launcher
# passes a small chunk under the interpreter, so that the tests cross chunk boundaries.
PAGE_CHUNK = 512
PAGE_CHUNK_INTERPRETER = 32


@triton.jit
def chunk_length(page_size, BLOCK_N: tl.constexpr, PAGE_CHUNK: tl.constexpr):
    """Keys per chunk: whole key blocks whose pages fit in PAGE_CHUNK entries wherever the chunk
    starts in its first page (at least one block, since PAGE_CHUNK > BLOCK_N)."""
    tl.static_assert(PAGE_CHUNK > BLOCK_N)
    return tl.maximum((PAGE_CHUNK - 1) * page_size // BLOCK_N, 1) * BLOCK_N


@triton.jit
def load_page_chunk(block_table_row, chunk_start, seqlen_k, page_size, PAGE_CHUNK: tl.constexpr):
    """(first page index, the page numbers of pages first .. first + PAGE_CHUNK - 1); entries past
    the sequence's last page read as 0 and are never used for a visible key."""
    first_page = chunk_start // page_size
    index = first_page + tl.arange(0, PAGE_CHUNK)
    pages = tl.load(block_table_row + index, mask=index < tl.cdiv(seqlen_k, page_size), other=0)
    return first_page, pages


@triton.jit
def paged_position(pages, first_page, offs_n, seqlen_k, page_size):
    """(page, row in page), both int64, of key positions offs_n inside the chunk whose page numbers
    `pages` holds.  Positions at or past seqlen_k map to row 0 of page 0 (their loads are masked or
    their scores discarded)."""
    in_range = offs_n < seqlen_k
    index = tl.minimum(tl.maximum(offs_n // page_size - first_page, 0), pages.shape[0] - 1)
    page = tl.where(in_range, tl.gather(pages, index, 0), 0).to(tl.int64)
    row = tl.where(in_range, offs_n % page_size, 0).to(tl.int64)
    return page, row
