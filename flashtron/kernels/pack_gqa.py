"""Packed GQA: the rows of a forward tile, as (query, head) pairs.

Without packing (PACK_GQA = 1) a tile holds BLOCK_M consecutive queries of one
head.  Decoding has one query or a few per sequence, so such a tile would be
almost all padding, and the G query heads of a kv head would each read the
same keys and values.  With PACK_GQA = G (the group size, a divisor of
BLOCK_M) a program owns one kv head and its tile holds BLOCK_M // G queries x
G heads, row r being query r // G of head kv_head * G + r % G: the keys are
read once for the whole group and the tile's rows are real work.
"""

import triton
import triton.language as tl


@triton.jit
def tile_rows(m_block, head, BLOCK_M: tl.constexpr, PACK_GQA: tl.constexpr):
    """(query index per row, query head per row, the head as a (BLOCK_M, 1) column or a scalar) of tile
    m_block.  `head` is the program's query head, or its kv head when packing."""
    rows = tl.arange(0, BLOCK_M)
    if PACK_GQA > 1:
        offs_m = m_block * (BLOCK_M // PACK_GQA) + rows // PACK_GQA
        head_rows = head * PACK_GQA + rows % PACK_GQA
        head_col = head_rows[:, None]
    else:
        offs_m = m_block * BLOCK_M + rows
        head_rows = head
        head_col = head
    return offs_m, head_rows, head_col
