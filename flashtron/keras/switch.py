"""`enable()` / `disable()`: flashtron behind Keras's own flash-attention switches.

After enable(), with Keras's PyTorch backend:
- keras.ops.dot_product_attention (and every Keras layer that calls it) runs on flashtron when its
  `flash_attention` is True, or None ("auto") while Keras's global setting is not disabled
  (keras.config.disable_flash_attention()); also when attn_logits_soft_cap is given, which Keras
  itself refuses outside JAX on TPU.  The hook is the backend function that keras.ops calls,
  keras.src.backend.torch.nn.dot_product_attention, plus the public function for the soft cap.
- keras.layers.MultiHeadAttention computes its attention with flashtron (dropout, masks and causal
  masks included) unless flash attention is off for the layer, through the same four methods as
  flashtron.keras.MultiHeadAttention; plain calls run the whole layer as one Function (`fused`).
Keras's own code still runs for what flashtron cannot do: float64, returned attention scores,
attention over several axes, inputs that are not 4-D.  disable() puts Keras's functions back.
"""

import keras
from keras.src import backend as keras_backend
from keras.src import ops as keras_src_ops
from keras.src.ops import nn as keras_src_ops_nn

from flashtron.keras import layers
from flashtron.keras.ops import SUPPORTED_DTYPES, dot_product_attention, require_torch_backend

__all__ = ["enable", "disable", "is_enabled"]

_saved = {}  # (owner, attribute) -> Keras's original, while enabled


def _keras_decides(flash_attention) -> bool:
    """True where Keras's flash attention is off for this call."""
    if flash_attention is None:
        return keras.config.is_flash_attention_enabled() is False
    return not flash_attention


def _backend_dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
                                   flash_attention=None, attn_logits_soft_cap=None):
    original = _saved[(keras_backend.nn, "dot_product_attention")]
    arguments = dict(bias=bias, mask=mask, scale=scale, is_causal=is_causal, flash_attention=flash_attention,
                     attn_logits_soft_cap=attn_logits_soft_cap)
    tensors = [keras.ops.convert_to_tensor(t) for t in (query, key, value)]
    if (_keras_decides(flash_attention) or any(t.dim() != 4 for t in tensors)
            or any(t.dtype not in SUPPORTED_DTYPES for t in tensors)):
        return original(query, key, value, **arguments)
    return dot_product_attention(*tensors, **arguments)


def _ops_dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
                               flash_attention=None, attn_logits_soft_cap=None):
    arguments = dict(bias=bias, mask=mask, scale=scale, is_causal=is_causal, flash_attention=flash_attention,
                     attn_logits_soft_cap=attn_logits_soft_cap)
    if attn_logits_soft_cap is not None and not _keras_decides(flash_attention):
        return dot_product_attention(query, key, value, **arguments)
    return _saved[(keras.ops, "dot_product_attention")](query, key, value, **arguments)


def _targets():
    """(owner, attribute, replacement) for every hook."""
    public_ops = (keras.ops, keras.ops.nn, keras_src_ops, keras_src_ops_nn)
    mha = keras.layers.MultiHeadAttention
    return ([(keras_backend.nn, "dot_product_attention", _backend_dot_product_attention)]
            + [(owner, "dot_product_attention", _ops_dot_product_attention) for owner in public_ops]
            + [(mha, "__init__", layers.init_allowing_dropout),
               (mha, "call", layers.call),
               (mha, "_compute_attention", layers.compute_attention),
               (mha, "_compute_attention_mask", layers.compute_attention_mask)])


def enable() -> None:
    """Route Keras's flash attention (keras.ops.dot_product_attention, keras.layers.MultiHeadAttention) to
    flashtron.  Idempotent.  Raises RuntimeError under a Keras backend other than PyTorch."""
    require_torch_backend("flashtron.keras.enable()")
    if _saved:
        return
    for owner, attribute, replacement in _targets():
        _saved[(owner, attribute)] = getattr(owner, attribute)
        setattr(owner, attribute, replacement)


def disable() -> None:
    """Put Keras's own functions back.  Idempotent."""
    for (owner, attribute), original in list(_saved.items()):
        setattr(owner, attribute, original)
    _saved.clear()


def is_enabled() -> bool:
    return bool(_saved)
