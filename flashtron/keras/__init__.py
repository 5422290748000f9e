"""flashtron for Keras 3 (PyTorch backend: KERAS_BACKEND=torch).

- `dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
  flash_attention=None, attn_logits_soft_cap=None)`: keras.ops.dot_product_attention on flashtron.
- `MultiHeadAttention`: keras.layers.MultiHeadAttention (same arguments, weights, config) on flashtron,
  attention dropout and masks included.
- `enable()` / `disable()` / `is_enabled()`: put flashtron behind Keras's own flash-attention switches,
  so existing models use it unchanged.

Importing this package imports keras; `import flashtron` does not.
"""

from flashtron.keras.layers import MultiHeadAttention
from flashtron.keras.ops import dot_product_attention
from flashtron.keras.switch import disable, enable, is_enabled

__all__ = ["dot_product_attention", "MultiHeadAttention", "enable", "disable", "is_enabled"]
