"""`MultiHeadAttention`: keras.layers.MultiHeadAttention with its attention computed by flashtron.

The subclass keeps Keras's arguments, sublayers, weights and config, and replaces four methods:
`__init__` (so attention dropout may be combined with flash attention, which flashtron supports
and Keras's own flash path refuses), `call`, `_compute_attention_mask` and `_compute_attention`.  The
module-level functions below are those replacements; `flashtron.keras.enable()` installs the
same functions on keras.layers.MultiHeadAttention itself.

`call` runs the whole layer (projections, attention, output projection) as one autograd Function
(`flashtron.keras.fused`) when nothing beyond a causal mask and attention dropout is asked of it: no
masks, no returned scores, one attention axis, key_dim == value_dim, plain EinsumDense sublayers (no
LoRA, quantization or activity regularizer), eager PyTorch on CUDA or CPU tensors.  Other calls run
Keras's own `call`, whose sublayers project and whose attention goes through the two methods below.

A causal mask is never materialised: `_compute_attention_mask` builds Keras's mask without the
causal part and leaves a note on the layer, which `_compute_attention` turns into flashtron's
causal band (top-left aligned, as Keras's).  What flashtron cannot do goes to Keras's own code:
returned attention scores, attention over more than one axis (`attention_axes` on inputs of
rank > 3), and float64.  Attention dropout draws from torch's generator (flashtron's Philox mask), not from
Keras's seed.  A query whose every key is masked gets output 0 (Keras's path averages the values).
"""

import inspect

import keras
from keras.src import backend as keras_backend
import torch

from flashtron import ops
from flashtron.keras import fused
from flashtron.keras.ops import SUPPORTED_DTYPES, attention, require_torch_backend
from flashtron.sdpa import top_left_causal

__all__ = ["MultiHeadAttention"]

_KERAS_MHA = keras.layers.MultiHeadAttention
# Keras's own methods, kept before enable() replaces them on the class.
KERAS_METHODS = {name: _KERAS_MHA.__dict__[name] for name in ("__init__", "call", "_compute_attention",
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


_PROJECTION = "abc,cde->abde"  # EinsumDense's equations for rank-3 inputs and one attention axis
_OUTPUT = "abcd,cde->abe"


def _plain_dense(dense, equation: str, compute_dtype) -> bool:
    """An EinsumDense that is one matrix product and a bias: the arithmetic `fused` does in its place."""
    return (dense.equation == equation and dense.activation in (None, keras.activations.linear)
            and not dense.lora_enabled and dense.quantization_mode is None and dense.activity_regularizer is None
            and dense.compute_dtype == compute_dtype)


def _fused_arguments(layer, query, key, value, masks, return_attention_scores, use_causal_mask):
    """multi_head_attention's weights and attention arguments for this call, or None where it needs
    Keras's own call."""
    inputs = (query, key, value)
    if (return_attention_scores or any(m is not None for m in masks) or not uses_flashtron(layer)
            or not all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in inputs)
            or any(keras_backend.get_keras_mask(t) is not None for t in inputs)
            or getattr(layer, "_use_gate", False) or getattr(layer, "_sliding_window", None) is not None
            or tuple(layer._attention_axes) != (1,) or layer._key_dim != layer._value_dim
            or query.device.type not in ("cuda", "cpu") or not ops._eager(*inputs)):
        return None
    dtype = query.dtype
    if (dtype not in SUPPORTED_DTYPES or key.dtype != dtype or value.dtype != dtype
            or keras.backend.standardize_dtype(layer.compute_dtype) != str(dtype).removeprefix("torch.")):
        return None
    projections = (layer._query_dense, layer._key_dense, layer._value_dense)
    if (not all(_plain_dense(d, _PROJECTION, layer.compute_dtype) for d in projections)
            or not _plain_dense(layer._output_dense, _OUTPUT, layer.compute_dtype)):
        return None
    window = (-1, -1)
    if use_causal_mask:
        kept, _, window = top_left_causal(query.shape[1], key.shape[1])
        if kept < key.shape[1]:  # keys no query sees: Keras's path slices them off
            return None
    weights = []
    for dense in projections:  # .value: cast to the compute dtype under a mixed policy, as the sublayer would
        weights += [dense.kernel.value.reshape(dense.kernel.shape[0], -1),
                    None if dense.bias is None else dense.bias.value.reshape(-1)]
    output = layer._output_dense
    weights += [output.kernel.value.reshape(-1, output.kernel.shape[-1]),
                None if output.bias is None else output.bias.value]
    if any(w is not None and w.dtype != dtype for w in weights):
        return None
    return weights, window


def call(layer, query, value, key=None, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
         return_attention_scores=False, training=None, use_causal_mask=False):
    """keras.layers.MultiHeadAttention.call: the whole layer in `fused` where it can, else Keras's call."""
    key = value if key is None else key  # as Keras's call does first
    masks = (query_mask, value_mask, key_mask, attention_mask)
    arguments = _fused_arguments(layer, query, key, value, masks, return_attention_scores, use_causal_mask)
    if arguments is None:
        return KERAS_METHODS["call"](layer, query, value, key=key, query_mask=query_mask, value_mask=value_mask,
                                     key_mask=key_mask, attention_mask=attention_mask,
                                     return_attention_scores=return_attention_scores, training=training,
                                     use_causal_mask=use_causal_mask)
    weights, window = arguments
    dropout_p = layer._dropout if training and layer._dropout > 0 else 0.0
    return fused.multi_head_attention(query, key, value, *weights, layer._num_heads, layer._inverse_sqrt_key_dim,
                                      window, dropout_p)


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

    def call(self, query, value, key=None, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
             return_attention_scores=False, training=None, use_causal_mask=False):
        return call(self, query, value, key=key, query_mask=query_mask, value_mask=value_mask, key_mask=key_mask,
                    attention_mask=attention_mask, return_attention_scores=return_attention_scores,
                    training=training, use_causal_mask=use_causal_mask)

    def _compute_attention_mask(self, query, value, query_mask=None, value_mask=None, key_mask=None,
                                attention_mask=None, use_causal_mask=False):
        return compute_attention_mask(self, query, value, query_mask=query_mask, value_mask=value_mask,
                                      key_mask=key_mask, attention_mask=attention_mask,
                                      use_causal_mask=use_causal_mask)

    def _compute_attention(self, query, key, value, attention_mask=None, training=None, return_attention_scores=False,
                           use_causal_mask=False):
        return compute_attention(self, query, key, value, attention_mask=attention_mask, training=training,
                                 return_attention_scores=return_attention_scores, use_causal_mask=use_causal_mask)
