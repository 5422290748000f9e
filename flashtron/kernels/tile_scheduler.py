"""Which tile a program computes.

Grids are flat (1-D), so batch * heads is not bound by the 65535 limit of
the other grid axes.  Programs are numbered block-fastest: the tiles of one
(batch, head) are neighbours and share K and V (or Q and dO) in L2.  Where
one end of the sequence carries more work (causal), `heaviest_first`
reverses the block order so the long tiles start first and the short ones
fill the tail.
"""

import triton
import triton.language as tl


@triton.jit
def tile_of_program(pid, num_blocks, num_heads, heaviest_first: tl.constexpr):
    """Return (block, batch_head, batch, head) for program `pid`."""
    block = pid % num_blocks
    batch_head = pid // num_blocks
    if heaviest_first:
        block = num_blocks - 1 - block
    return block, batch_head, batch_head // num_heads, batch_head % num_heads
