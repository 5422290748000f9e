"""Attention sinks (as in gpt-oss and FlashAttention-4): one learnable logit per head.

The sink joins each row's softmax denominator and has no value vector, so it
lowers every probability without adding to the output.  Its gradient needs no
kernel: with P_sink = exp(sink - lse) per row and delta = rowsum(dO * O),
dL/d sink_h = -sum over batch and rows of P_sink * delta.  Both engines call
`sink_gradient` with the lse and delta they already have.
"""

import torch


def sink_gradient(sinks, softmax_lse: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """sinks (H,) float32, softmax_lse and delta float32 (B, H, Sq), or (H, total_q) for
    variable-length batches -> d loss / d sinks, (H,).

    Without sinks, an empty tensor (the custom op returns tensors only)."""
    if sinks is None:
        return softmax_lse.new_empty(0)
    # lse is +inf on rows that see no key: their P_sink is taken as 0 (their delta is 0 too).
    p_sink = torch.exp(sinks[:, None] - softmax_lse)
    return -(p_sink * delta).sum(dim=-1).reshape(-1, sinks.shape[0]).sum(dim=0)
