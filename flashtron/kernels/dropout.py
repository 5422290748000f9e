"""Dropout on the attention probabilities, from a counter-based RNG.

Each probability (batch * heads + head, query i, key j) gets one Philox draw
with counters (j, i, batch_head, 0) under the call's seed.  The draw depends on
the element only, not on the tile it sits in or its orientation, so the
backward kernels regenerate exactly the forward's mask and nothing is stored.
An element survives when its uniform draw is >= dropout_p; survivors are
scaled by 1 / (1 - dropout_p).
"""

import triton
import triton.language as tl


@triton.jit
def dropout_keep(seed, batch_head, query_idx, key_idx, dropout_p):
    """Boolean tile (query_idx and key_idx broadcast against each other): which entries survive."""
    zeros = tl.zeros_like(query_idx + key_idx)
    keys = (key_idx + zeros).to(tl.uint32)
    queries = (query_idx + zeros).to(tl.uint32)
    draw, _, _, _ = tl.philox(seed, keys, queries, (zeros + batch_head).to(tl.uint32), zeros.to(tl.uint32))
    return tl.uint_to_uniform_float(draw) >= dropout_p


@triton.jit
def dropout_seed(DropoutSeed, DROPOUT: tl.constexpr):
    """The call's seed (a device scalar, so no host synchronisation); 0 when dropout is off."""
    seed = 0
    if DROPOUT:
        seed = tl.load(DropoutSeed)
    return seed


@triton.jit
def dropout_mask_kernel(Seed, Keep, seqlen_q, seqlen_k, num_m_blocks, num_n_blocks, dropout_p,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes the keep mask (batch * heads, seqlen_q, seqlen_k) as int8: for return_attn_probs only."""
    pid = tl.program_id(0)
    n_block = pid % num_n_blocks
    m_block = (pid // num_n_blocks) % num_m_blocks
    batch_head = pid // (num_n_blocks * num_m_blocks)
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)[:, None]
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    keep = dropout_keep(tl.load(Seed), batch_head, offs_m, offs_n, dropout_p)
    offsets = batch_head.to(tl.int64) * seqlen_q * seqlen_k + offs_m.to(tl.int64) * seqlen_k + offs_n
    tl.store(Keep + offsets, keep.to(tl.int8), mask=(offs_m < seqlen_q) & (offs_n < seqlen_k))
