"""`scaled_dot_product_attention` with torch.nn.functional's signature and semantics, on flashtron.

Code written for torch's SDPA switches by import. torch's layout is (batch, ..., heads, seqlen,
head_dim); flashtron's is (batch, seqlen, heads, head_dim), so the inputs are transposed views
(no copy) and the output is transposed back. What torch expresses with a materialised mask is
mapped onto flashtron's own arguments where it can be: `is_causal` (aligned to the top-left corner,
unlike flash-attn's bottom-right) becomes a causal flag or a sliding window, grouped and broadcast
key/value heads become flashtron's GQA/MQA, and only `attn_mask` itself reaches the kernels, as an
additive bias (a boolean mask is turned into 0 / -inf first). A query row that sees no key gets
output 0, as torch 2.13's math backend gives.
"""

import math

import torch

from flashtron.interface import flash_attn_func

__all__ = ["scaled_dot_product_attention", "top_left_causal"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_inputs(query, key, value):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 3:
            raise ValueError(f"{name} must have at least 3 dimensions (batch, ..., seqlen, head_dim), "
                             f"got shape {tuple(t.shape)}")
    if not query.dim() == key.dim() == value.dim():
        raise ValueError(f"query, key and value must have the same number of dimensions, got shapes "
                         f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}")
    if query.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"query has dtype {query.dtype}; flashtron supports float16, bfloat16 and float32 "
                        f"(torch's math backend serves float64)")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but query has {query.dtype}; they must match")
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key's head dim ({key.shape[-1]}) must equal query's ({query.shape[-1]})")
    if query.shape[-1] == 0:
        raise ValueError("query and key need a head dim (last dimension) of at least 1, got 0")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value must have the same sequence length, got {key.shape[-2]} and "
                         f"{value.shape[-2]}")


def _to_4d(query, key, value):
    """(N, ..., H, S, D) -> (B, H, S, D) with the batch dims broadcast and flattened; 3-D inputs
    (N, S, D) get one head.  Returns the three and the output's leading shape."""
    if query.dim() == 3:
        return query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1), (query.shape[0],)
    try:
        lead = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
    except RuntimeError:
        raise ValueError(f"the batch dimensions of query {tuple(query.shape[:-3])}, key {tuple(key.shape[:-3])} "
                         f"and value {tuple(value.shape[:-3])} do not broadcast") from None
    # expand keeps views (stride 0); reshape copies only where a broadcast batch dim must be flattened
    out = [t.expand(*lead, *t.shape[-3:]).reshape(math.prod(lead), *t.shape[-3:]) for t in (query, key, value)]
    return (*out, tuple(lead))


def _heads(query, key, value, enable_gqa):
    """Match key/value heads to query heads the way torch does: equal, a multiple with enable_gqa
    (query head h uses key head h // (Hq // Hk), flashtron's own grouping), or broadcast from 1."""
    num_heads, num_heads_k = query.shape[1], key.shape[1]
    if value.shape[1] != num_heads_k:
        raise ValueError(f"key and value must have the same number of heads, got {num_heads_k} and "
                         f"{value.shape[1]}")
    if num_heads == num_heads_k or num_heads_k == 1:
        return query, key, value
    if enable_gqa:
        if num_heads % num_heads_k != 0:
            raise ValueError(f"with enable_gqa=True the number of query heads ({num_heads}) must be a multiple of "
                             f"the number of key/value heads ({num_heads_k})")
        return query, key, value
    if num_heads == 1:  # torch broadcasts a single query head over the key heads
        return query.expand(-1, num_heads_k, -1, -1), key, value
    raise ValueError(f"query has {num_heads} heads and key/value have {num_heads_k}; pass enable_gqa=True "
                     f"for grouped-query attention")


def _mask_as_bias(attn_mask, query, lead, num_heads, seqlen_q, seqlen_k):
    """attn_mask broadcastable to (N, ..., Hq, L, S) -> an additive bias (B|1, Hq|1, L|1, S|1)."""
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and attn_mask.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"attn_mask must be bool (True takes part) or a float16/bfloat16/float32 additive mask, "
                        f"got {attn_mask.dtype}")
    if attn_mask.device != query.device:
        raise ValueError(f"attn_mask is on {attn_mask.device} but query is on {query.device}")
    # 3-D inputs (N, L, E) have no head dim: their weights, and so the mask, broadcast to (N, L, S).
    three_d = query.dim() == 3
    target = (*lead, seqlen_q, seqlen_k) if three_d else (*lead, num_heads, seqlen_q, seqlen_k)
    if attn_mask.dim() > len(target):
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} has more dimensions than the attention "
                         f"weights {target}")
    mask = attn_mask.reshape((1,) * (len(target) - attn_mask.dim()) + tuple(attn_mask.shape))
    if any(n not in (1, want) for n, want in zip(mask.shape, target)):
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the attention "
                         f"weights' shape {target}")
    if three_d:
        mask = mask.unsqueeze(1)
    if len(lead) != 1:  # flatten the batch dims as the inputs were
        mask = mask.expand(*lead, *mask.shape[-3:]).reshape(-1, *mask.shape[-3:])
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask


def top_left_causal(seqlen_q, seqlen_k):
    """A top-left aligned causal mask (query i sees key j iff j <= i, torch's and Keras's is_causal) in
    flashtron's terms: (keys to keep, causal, window_size).

    flashtron's band is bottom-right aligned (j <= i + Sk - Sq + right), so right = Sq - Sk.  With
    Sk > Sq that is negative: keys j >= Sq are seen by no query, so only the first Sq keys are kept
    and the rest is plain causal.
    """
    kept = min(seqlen_k, seqlen_q)
    return kept, kept == seqlen_q, (-1, seqlen_q - kept)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention, computed by flashtron.

    query (N, ..., Hq, L, E), key (N, ..., H, S, E), value (N, ..., H, S, Ev); batch dims broadcast
    as in torch, and 3-D inputs (N, L, E) are one head.  Returns (N, ..., Hq, L, Ev) in query's dtype.
    attn_mask, broadcastable to (N, ..., Hq, L, S): boolean (True takes part) or float (added to the
    scaled scores; -inf masks; its gradient is returned when it requires grad).  is_causal masks
    aligned to the top-left corner: query i sees key j iff j <= i.  It cannot be combined with
    attn_mask, as torch documents (fold the causal mask into attn_mask instead).  scale defaults to
    E ** -0.5.  enable_gqa allows Hq to be a multiple of H; key/value with one head broadcast
    either way.  dropout_p > 0 always drops, as in torch (pass 0.0 for evaluation); the mask comes
    from flashtron's generator (seeded by torch.manual_seed, but not torch's draws).  float16,
    bfloat16 and float32; E and Ev up to 256.
    """
    _check_inputs(query, key, value)
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    if is_causal and attn_mask is not None:
        raise ValueError("is_causal=True and attn_mask cannot both be set (torch's rule); put the causal "
                         "mask into attn_mask instead")
    head_dim, value_dim = query.shape[-1], value.shape[-1]
    if scale is None:
        scale = head_dim ** -0.5
    q4, k4, v4, lead = _to_4d(query, key, value)
    q4, k4, v4 = _heads(q4, k4, v4, enable_gqa)
    seqlen_q, seqlen_k = q4.shape[2], k4.shape[2]
    bias = None
    if attn_mask is not None:
        bias = _mask_as_bias(attn_mask, query, lead, q4.shape[1], seqlen_q, seqlen_k)
    # flashtron takes one head dim for q, k and v: zero-pad the smaller side (exact: zero columns add
    # nothing to q.k, and zero value columns are sliced off the output).
    common_dim = max(head_dim, value_dim)
    if head_dim < common_dim:
        q4 = torch.nn.functional.pad(q4, (0, common_dim - head_dim))
        k4 = torch.nn.functional.pad(k4, (0, common_dim - head_dim))
    elif value_dim < common_dim:
        v4 = torch.nn.functional.pad(v4, (0, common_dim - value_dim))
    causal, window = False, (-1, -1)
    if is_causal:
        seqlen_k, causal, window = top_left_causal(seqlen_q, seqlen_k)
        k4, v4 = k4[:, :, :seqlen_k], v4[:, :, :seqlen_k]
    out = flash_attn_func(q4.transpose(1, 2), k4.transpose(1, 2), v4.transpose(1, 2), dropout_p=dropout_p,
                          softmax_scale=scale, causal=causal, window_size=window, attn_bias=bias)
    out = out.transpose(1, 2)[..., :value_dim]
    if query.dim() == 3:
        return out.squeeze(1)
    return out.reshape(*lead, *out.shape[1:])
