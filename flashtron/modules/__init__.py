"""nn.Module layers with flash-attn 2.x's `flash_attn.modules.mha` API, computed by flashtron.

`FlashSelfAttention` (packed qkv), `FlashCrossAttention` (q and packed kv) and the full
multi-head layer `MHA` (projections, GQA/MQA, rotary embeddings, ALiBi, sliding windows, padded
or variable-length batches, KV-cache decoding).  Replace `from flash_attn.modules.mha import MHA`
by `from flashtron.modules.mha import MHA` (or `from flashtron.modules import MHA`).
"""

from flashtron.modules.mha import (MHA, FlashCrossAttention, FlashSelfAttention, InferenceParams,
                                   get_alibi_slopes)

__all__ = ["MHA", "FlashSelfAttention", "FlashCrossAttention", "InferenceParams", "get_alibi_slopes"]
