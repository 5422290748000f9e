"""Dropout on the attention probabilities, from a counter-based RNG.

Philox yields four 32-bit draws per call.  Keys are taken in aligned quads:
the probability of (batch * heads + head, query i, key j) gets draw number
j % 4 of the call with counters (j // 4, i, batch_head, 0) under the call's
seed.  A draw depends on the element only, not on the tile it sits in or its
orientation, so the backward kernels regenerate exactly the forward's mask and
nothing is stored.  An element survives when its uniform draw is >=
dropout_p; survivors are scaled by 1 / (1 - dropout_p).
"""

import triton
import triton.language as tl

from flashtron.kernels import compiled


@triton.jit
def dropout_keep(seed, batch_head, offs_q, start_k, dropout_p, BLOCK_K: tl.constexpr):
    """Boolean (len(offs_q), BLOCK_K) tile: which of queries offs_q x keys start_k + [0, BLOCK_K)
    survive.  start_k must be a multiple of 4 (tile starts are)."""
    quads = start_k // 4 + tl.arange(0, BLOCK_K // 4)
    zeros = tl.zeros([offs_q.shape[0], BLOCK_K // 4], dtype=tl.uint32)
    draw0, draw1, draw2, draw3 = tl.philox(seed, zeros + quads[None, :].to(tl.uint32),
                                           zeros + offs_q[:, None].to(tl.uint32),
                                           zeros + batch_head.to(tl.uint32), zeros)
    # join(join(d0, d2), join(d1, d3)) flattens to d0, d1, d2, d3 along the last axis:
    # the four draws land on four consecutive keys.
    draws = tl.reshape(tl.join(tl.join(draw0, draw2), tl.join(draw1, draw3)), (offs_q.shape[0], BLOCK_K))
    return tl.uint_to_uniform_float(draws) >= dropout_p


@triton.jit
def dropout_seed(DropoutSeed, DROPOUT: tl.constexpr):
    """The call's seed (a device scalar, so no host synchronisation); 0 when dropout is off."""
    seed = 0
    if DROPOUT:
        seed = tl.load(DropoutSeed)
    return seed


@compiled.fast_launch
@triton.jit
def dropout_mask_kernel(Seed, Keep, seqlen_q, seqlen_k, num_m_blocks, num_n_blocks, dropout_p, first_batch_head,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes the keep mask (batch * heads, seqlen_q, seqlen_k) as int8, drawn for batch * heads
    entries numbered from first_batch_head: for return_attn_probs only."""
    pid = tl.program_id(0)
    n_block = pid % num_n_blocks
    m_block = (pid // num_n_blocks) % num_m_blocks
    batch_head = pid // (num_n_blocks * num_m_blocks)
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = dropout_keep(tl.load(Seed), first_batch_head + batch_head, offs_m, n_block * BLOCK_N, dropout_p, BLOCK_N)
    offsets = (batch_head.to(tl.int64) * seqlen_q * seqlen_k + offs_m.to(tl.int64)[:, None] * seqlen_k
               + offs_n[None, :])
    tl.store(Keep + offsets, keep.to(tl.int8), mask=(offs_m < seqlen_q)[:, None] & (offs_n < seqlen_k)[None, :])
