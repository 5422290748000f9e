"""merge_attentions: combine attentions of one query over disjoint parts of the keys.

With out_i and lse_i (natural log) from each part, the attention over all keys is
    out = sum_i exp(lse_i - lse) out_i,   lse = log sum_i exp(lse_i).
The sum runs in float32 (or float64) after subtracting the largest lse of the row, so nothing overflows.  A part
whose lse is -inf saw no key and weighs 0 (+inf, flash-attn's marker for the same thing, is read
alike); a row in which every part is empty gets out 0 and lse -inf, without NaN in the values or in
the gradients.  Plain PyTorch operations, so autograd differentiates it in both outputs.
"""

import math
from typing import Optional, Sequence, Tuple, Union

import torch

Chunks = Union[torch.Tensor, Sequence[torch.Tensor]]


def _as_grouped_chunks(attn_split: Chunks, lse_split: Chunks):
    """Lists of chunks as attn (B, M, G, H, K) and lse (B, G, H, M), and whether G was added."""
    attn = list(attn_split.unbind(0)) if isinstance(attn_split, torch.Tensor) else list(attn_split)
    lse = list(lse_split.unbind(0)) if isinstance(lse_split, torch.Tensor) else list(lse_split)
    if not attn or len(attn) != len(lse):
        raise ValueError(f"merge_attentions needs as many attention chunks as LSE chunks, at least one; got "
                         f"{len(attn)} and {len(lse)}")
    first_attn, first_lse = attn[0], lse[0]
    if first_attn.ndim not in (4, 5) or first_lse.ndim != first_attn.ndim - 1:
        raise ValueError(f"attention chunks must be [B, M, H, K] with LSE [B, H, M], or [B, M, G, H, K] with "
                         f"LSE [B, G, H, M]; got {tuple(first_attn.shape)} and {tuple(first_lse.shape)}")
    added_group = first_attn.ndim == 4
    if added_group:
        attn, lse = [a.unsqueeze(2) for a in attn], [s.unsqueeze(1) for s in lse]
    batch, seqlen, groups, heads, head_dim = attn[0].shape
    for i, (a, s) in enumerate(zip(attn, lse)):
        if tuple(a.shape) != (batch, seqlen, groups, heads, head_dim) or tuple(s.shape) != (batch, groups, heads,
                                                                                              seqlen):
            raise ValueError(f"chunk {i}: attention {tuple(a.shape)} and LSE {tuple(s.shape)} do not match chunk 0's "
                             f"attention {tuple(attn_split[0].shape)} and its LSE layout [B, (G,) H, M]")
    return attn, lse, added_group


def merge_attentions(attn_split: Chunks, lse_split: Chunks, write_lse: bool = True,
                     output_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Merge attention chunks computed on disjoint key sets for the same queries.

    attn_split: a list of [B, M, H, K] (or [B, M, G, H, K]) tensors, or one stacked
    [num_chunks, B, M, (G,) H, K] tensor; lse_split likewise: [B, (G,) H, M] each, or
    [num_chunks, B, (G,) H, M].  Returns (out [B, M, (G,) H, K] in output_dtype or the chunks' dtype,
    lse [B, (G,) H, M] in the LSE dtype, or None without write_lse).  write_lse must stay True when
    the inputs require gradients (as in xFormers).
    """
    attn, lse, added_group = _as_grouped_chunks(attn_split, lse_split)
    requires_grad = torch.is_grad_enabled() and any(t.requires_grad for t in attn + lse)
    if requires_grad and not write_lse:
        raise ValueError("merge_attentions: write_lse must be True when the inputs require gradients")
    # float32 at least (float64 inputs stay float64).
    compute_dtype = torch.promote_types(torch.promote_types(attn[0].dtype, lse[0].dtype), torch.float32)
    lse_all = torch.stack([s.to(compute_dtype) for s in lse])  # (chunks, B, G, H, M)
    lse_all = torch.where(torch.isposinf(lse_all), -math.inf, lse_all)
    # The result does not depend on the shift (it cancels), so no gradient flows through it.
    row_max = lse_all.amax(dim=0).detach()
    shift = torch.where(torch.isfinite(row_max), row_max, 0.0)
    weights = torch.exp(lse_all - shift)  # 0 for empty chunks, <= 1 otherwise
    total = weights.sum(dim=0)
    seen = total > 0
    safe_total = torch.where(seen, total, 1.0)
    # (chunks, B, G, H, M) -> (chunks, B, M, G, H, 1), the attention chunks' layout.
    normalised = (weights / safe_total).permute(0, 1, 4, 2, 3).unsqueeze(-1)
    out = None
    for i, a in enumerate(attn):
        # where(): an empty chunk contributes 0 even if its output holds garbage (or NaN).
        term = torch.where(normalised[i] > 0, normalised[i] * a.to(compute_dtype), 0.0)
        out = term if out is None else out + term
    out = out.to(output_dtype or attn[0].dtype)
    merged_lse = None
    if write_lse:
        merged_lse = torch.where(seen, shift + torch.log(safe_total), -math.inf).to(lse[0].dtype)
    if added_group:
        out = out.squeeze(2)
        merged_lse = None if merged_lse is None else merged_lse.squeeze(1)
    return out, merged_lse
