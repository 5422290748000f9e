"""`MultiHeadAttention`: keras.layers.MultiHeadAttention with its attention computed by flashtron.

The subclass keeps Keras's arguments, sublayers, weights and config, and replaces three methods:
`__init__` (so attention dropout may be combined with flash attention, which flashtron supports
and Keras's own flash path refuses), `_compute_attention_mask` and `_compute_attention`.  The
module-level functions below are those replacements; `flashtron.keras.enable()` installs the
same functions on keras.layers.MultiHeadAttention itself.

A causal mask is never materialised: `_compute_attention_mask` builds Keras's mask without the
causal part and leaves a note on the layer, which `_compute_attention` turns into flashtron's
causal band (top-left aligned, as Keras's).  What flashtron cannot do goes to Keras's own code:
returned attention scores, attention over more than one axis (`attention_axes` on inputs of
rank > 3), and float64.  Attention dropout draws from torch's generator (flashtron's Philox mask), not from
Keras's seed.  A query whose every key is masked gets output 0 (Keras's path averages the values).
"""

import inspect

import keras

from flashtron.keras.ops import SUPPORTED_DTYPES, attention, require_torch_backend

__all__ = ["MultiHeadAttention"]

_KERAS_MHA = keras.layers.MultiHeadAttention
# Keras's own methods, kept before enable() replaces them on the class.
KERAS_METHODS = {name: _KERAS_MHA.__dict__[name] for name in ("__init__", "_compute_attention",
                                                             "_compute_attention_mask")}
_KERAS_INIT_SIGNATURE = inspect.signature(KERAS_METHODS["__init__"])


def uses_flashtron(layer) -> bool:
    """Keras sets _flash_attention to flash_attention or the global setting: None is "auto", True
    "on", False "off" (keras.config.disable_flash_attention()).  flashtron.keras.MultiHeadAttention
    always uses flashtron; a patched Keras layer uses it unless flash attention is off."""
    return isinstance(layer, MultiHeadAttention) or getattr(layer, "_flash_attention", None) is not False


def init_allowing_dropout(layer, *args, **kwargs):
    """Keras's __init__, minus its refusal of dropout with flash attention enabled."""
    bound = _KERAS_INIT_SIGNATURE.bind(layer, *args, **kwargs)
    dropout = bound.arguments.get("dropout", 0.0)
    bound.arguments["dropout"] = 0.0
    KERAS_METHODS["__init__"](*bound.args, **bound.kwargs)
    layer._dropout = dropout  # read when the Dropout sublayer is built, and by get_config


def compute_attention_mask(layer, query, value, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
                           use_causal_mask=False):
    """Keras's mask without its causal part, which is noted for compute_attention instead."""
    if not uses_flashtron(layer):
        layer._flashtron_causal = False
        return KERAS_METHODS["_compute_attention_mask"](layer, query, value, query_mask=query_mask,
                                                        value_mask=value_mask, key_mask=key_mask,
                                                        attention_mask=attention_mask, use_causal_mask=use_causal_mask)
    layer._flashtron_causal = use_causal_mask
    return KERAS_METHODS["_compute_attention_mask"](layer, query, value, query_mask=query_mask, value_mask=value_mask,
                                                    key_mask=key_mask, attention_mask=attention_mask,
                                                    use_causal_mask=False)


def compute_attention(layer, query, key, value, attention_mask=None, training=None, return_attention_scores=False,
                      use_causal_mask=False):
    """query (B, T, N, key_dim), key (B, S, N, key_dim), value (B, S, N, value_dim); attention_mask
    bool (B, T, S) or None.  Returns (output (B, T, N, value_dim), None)."""
    causal = bool(use_causal_mask or getattr(layer, "_flashtron_causal", False))
    layer._flashtron_causal = False
    if (not uses_flashtron(layer) or return_attention_scores or len(query.shape) != 4
            or keras.backend.backend() != "torch" or query.dtype not in SUPPORTED_DTYPES):
        original = KERAS_METHODS["_compute_attention"]
        extra = {"use_causal_mask": True} if causal else {}
        # Keras's explicit path, which Keras itself refuses while its flash attention is on.
        flash_attention, layer._flash_attention = layer._flash_attention, False
        try:
            return original(layer, query, key, value, attention_mask, training, return_attention_scores, **extra)
        finally:
            layer._flash_attention = flash_attention
    mask = None
    if attention_mask is not None:
        mask = keras.ops.convert_to_tensor(attention_mask)
        mask = mask.reshape(mask.shape[0], 1, *mask.shape[1:]) if mask.dim() == 3 else mask
    dropout_rate = layer._dropout if training and layer._dropout > 0 else 0.0
    output = attention(query, key, value, mask=mask, scale=layer._inverse_sqrt_key_dim, is_causal=causal,
                       dropout_rate=dropout_rate)
    return output, None


@keras.saving.register_keras_serializable(package="flashtron")
class MultiHeadAttention(_KERAS_MHA):
    """keras.layers.MultiHeadAttention (same arguments, weights and config) computed by flashtron.

    Attention dropout, attention_mask, Keras masks and use_causal_mask all run in flashtron's kernels;
    `flash_attention` is accepted and flashtron is used whatever its value.  Saved models record the
    class as "flashtron>MultiHeadAttention"; the weights load into a plain keras.layers.MultiHeadAttention
    of the same config (see the README).  Needs Keras's PyTorch backend.
    """

    def __init__(self, *args, **kwargs):
        require_torch_backend("flashtron.keras.MultiHeadAttention")
        init_allowing_dropout(self, *args, **kwargs)
        self._flashtron_causal = False

    def _compute_attention_mask(self, query, value, query_mask=None, value_mask=None, key_mask=None,
                                attention_mask=None, use_causal_mask=False):
        return compute_attention_mask(self, query, value, query_mask=query_mask, value_mask=value_mask,
                                      key_mask=key_mask, attention_mask=attention_mask,
                                      use_causal_mask=use_causal_mask)

    def _compute_attention(self, query, key, value, attention_mask=None, training=None, return_attention_scores=False,
                           use_causal_mask=False):
        return compute_attention(self, query, key, value, attention_mask=attention_mask, training=training,
                                 return_attention_scores=return_attention_scores, use_causal_mask=use_causal_mask)
