"""`dot_product_attention` with keras.ops' signature and semantics, computed by flashtron.

Keras's layout (batch, seqlen, heads, head_dim) is flashtron's own, so tensors pass through
untouched.  Keras's arguments map onto flashtron's: a boolean `mask` (True takes part) becomes an
additive 0 / -inf bias, `bias` is added as is (and gets its gradient), `is_causal` is aligned to
the top-left corner as Keras's PyTorch backend aligns it (and combines with `mask`), and
`attn_logits_soft_cap` is flashtron's tanh soft cap on the scaled scores.  Symbolic inputs (while
a functional model is built) get a Keras Operation whose call is the same function.  One
difference from Keras's own path: a query row whose every key is masked gets output 0 here,
where Keras (which masks with a large finite negative) averages all the values.
"""

import keras
import torch

from flashtron.interface import flash_attn_func
from flashtron.sdpa import top_left_causal

__all__ = ["dot_product_attention", "attention", "require_torch_backend", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def require_torch_backend(what: str) -> None:
    backend = keras.backend.backend()
    if backend != "torch":
        raise RuntimeError(f"{what} needs Keras's PyTorch backend (set KERAS_BACKEND=torch before importing keras); "
                           f"the active backend is {backend!r}")


def _as_4d(name, t, target):
    """t broadcastable to target (B, N, T, S) -> a 4-D view with size-1 dims kept."""
    if t.dim() > 4:
        raise ValueError(f"{name} must broadcast to (batch, num_heads, query_length, key_length) = {target}, "
                         f"got shape {tuple(t.shape)}")
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if any(n not in (1, want) for n, want in zip(t.shape, target)):
        raise ValueError(f"{name} must broadcast to (batch, num_heads, query_length, key_length) = {target}, "
                         f"got shape {tuple(t.shape)}")
    return t


def attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False, soft_cap=None, dropout_rate=0.0):
    """The computation on torch tensors: query and key (B, T, N, H) and (B, S, K, H), value (B, S, K, Hv),
    of one dtype; bias float and mask bool, each broadcastable to (B, N, T, S).  Returns (B, T, N, Hv)."""
    target = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
    head_dim, value_dim = query.shape[-1], value.shape[-1]
    if scale is None:
        scale = head_dim ** -0.5
    # flashtron takes one head dim for q, k and v: zero-pad the smaller side (exact), slice the output.
    if value_dim < head_dim:
        value = torch.nn.functional.pad(value, (0, head_dim - value_dim))
    elif head_dim < value_dim:
        query = torch.nn.functional.pad(query, (0, value_dim - head_dim))
        key = torch.nn.functional.pad(key, (0, value_dim - head_dim))
    additive = None
    if mask is not None:
        mask = _as_4d("mask", mask.to(torch.bool), target)
        additive = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    if bias is not None:
        additive = _as_4d("bias", bias.to(query.dtype), target)
    causal, window = False, (-1, -1)
    if is_causal:
        kept, causal, window = top_left_causal(query.shape[1], key.shape[1])
        key, value = key[:, :kept], value[:, :kept]
        if additive is not None and additive.shape[-1] != 1:
            additive = additive[..., :kept]
    out = flash_attn_func(query, key, value, dropout_p=dropout_rate, softmax_scale=scale, causal=causal,
                          window_size=window, softcap=0.0 if soft_cap is None else float(soft_cap), attn_bias=additive)
    return out if out.shape[-1] == value_dim else out[..., :value_dim]


class _DotProductAttention(keras.Operation):
    """The symbolic form, for functional models: shape inference here, the work in `dot_product_attention`."""

    def __init__(self, is_causal=False, attn_logits_soft_cap=None, name=None):
        super().__init__(name=name)
        self.is_causal = is_causal
        self.attn_logits_soft_cap = attn_logits_soft_cap

    def call(self, query, key, value, bias=None, mask=None, scale=None):
        return dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale, is_causal=self.is_causal,
                                     attn_logits_soft_cap=self.attn_logits_soft_cap)

    def compute_output_spec(self, query, key, value, bias=None, mask=None, scale=None):
        dtype = keras.backend.result_type(query.dtype, key.dtype, value.dtype)
        return keras.KerasTensor(query.shape, dtype=dtype)


def dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False, flash_attention=None,
                          attn_logits_soft_cap=None):
    """keras.ops.dot_product_attention, computed by flashtron (Keras's PyTorch backend).

    query (B, T, N, H); key and value (B, S, K, H) with N a multiple of K (GQA/MQA).  bias: added to
    the scaled scores, broadcastable to (B, N, T, S); mask: bool, broadcastable likewise, True takes
    part (bias and mask are exclusive, as in Keras).  scale defaults to 1 / sqrt(H).  is_causal:
    query i sees key j iff j <= i (top-left), combined with mask when both are given.
    attn_logits_soft_cap: scores become cap * tanh(scores / cap) before bias and masks.
    flash_attention is accepted for Keras's signature; flashtron always computes.  The inputs are
    cast to their common dtype: float16, bfloat16 or float32.  Returns (B, T, N, H).
    """
    require_torch_backend("flashtron.keras.dot_product_attention")
    if bias is not None and mask is not None:
        raise ValueError("only one of bias and mask can be given (Keras's rule); fold the mask into the bias "
                         "as -inf entries")
    if attn_logits_soft_cap is not None and not attn_logits_soft_cap > 0:
        raise ValueError(f"attn_logits_soft_cap must be None or positive, got {attn_logits_soft_cap!r}")
    if keras.backend.is_keras_tensor(query) or keras.backend.is_keras_tensor(key) or \
            keras.backend.is_keras_tensor(value):
        return _DotProductAttention(is_causal, attn_logits_soft_cap).symbolic_call(query, key, value, bias=bias,
                                                                                  mask=mask, scale=scale)
    query, key, value = (keras.ops.convert_to_tensor(t) for t in (query, key, value))
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (batch, seqlen, heads, head_dim), got shape "
                             f"{tuple(t.shape)}")
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"query, key and value have compute dtype {dtype}; flashtron supports float16, bfloat16 "
                        f"and float32")
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    bias = None if bias is None else keras.ops.convert_to_tensor(bias)
    mask = None if mask is None else keras.ops.convert_to_tensor(mask)
    return attention(query, key, value, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
                     soft_cap=attn_logits_soft_cap)
