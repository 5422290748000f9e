"""Merging partial attention outputs through their log-sum-exps, in float32.

A block call returns its rows' output normalised over its own keys and lse_b = log sum_j exp(s_j)
over them (natural log; flashtron marks a row that saw no key with lse +inf and output 0).  Over
several disjoint key blocks the exact result is lse = log sum_b exp(lse_b) and
out = sum_b exp(lse_b - lse) out_b.  The accumulator keeps -inf for "no key seen yet", the
log-sum-exp of an empty set, so logaddexp and the weights need no special cases except a row that
has still seen nothing, whose weights are set to 0 instead of exp(-inf - -inf) = NaN.
"""

import math

import torch


def new_accumulators(batch: int, seqlen: int, num_heads: int, head_dim: int, device):
    """(out, lse): float32 zeros (B, S, H, D) and -inf (B, H, S)."""
    out = torch.zeros((batch, seqlen, num_heads, head_dim), dtype=torch.float32, device=device)
    lse = torch.full((batch, num_heads, seqlen), -math.inf, dtype=torch.float32, device=device)
    return out, lse


def merge_block(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
    """Fold one block's (block_out (B, S, H, D), block_lse (B, H, S)) into the accumulators, in place.

    out and lse may be views of the rows the block covers.  block_lse uses flashtron's convention
    (+inf where the block's rows saw no key, with block_out 0 there).
    """
    block_lse = block_lse.masked_fill(block_lse == math.inf, -math.inf)
    merged = torch.logaddexp(lse, block_lse)
    reference = merged.masked_fill(merged == -math.inf, 0.0)
    # (B, H, S) -> (B, S, H, 1), to scale rows of (B, S, H, D).
    old_weight = torch.exp(lse - reference).transpose(1, 2).unsqueeze(-1)
    new_weight = torch.exp(block_lse - reference).transpose(1, 2).unsqueeze(-1)
    out.mul_(old_weight).addcmul_(block_out, new_weight)
    lse.copy_(merged)


def finish(out: torch.Tensor, lse: torch.Tensor, dtype: torch.dtype):
    """The accumulators as a call's (out in `dtype`, lse with +inf for rows that saw no key)."""
    return out.to(dtype), lse.masked_fill(lse == -math.inf, math.inf)
