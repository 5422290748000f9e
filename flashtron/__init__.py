"""flashtron: fast, memory-efficient exact attention for PyTorch, in Triton, with flash-attn's API.

    from flashtron import flash_attn_func
    out = flash_attn_func(q, k, v, causal=True)   # q, k, v: (batch, seqlen, heads, head_dim)

CUDA tensors run Triton kernels; CPU tensors run an exact blockwise PyTorch path
(or the same Triton kernels under Triton's interpreter when TRITON_INTERPRET=1).
"""

from flashtron.interface import (flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                                 flash_attn_varlen_func, flash_attn_varlen_kvpacked_func,
                                 flash_attn_varlen_qkvpacked_func)
from flashtron.cache_update import update_kv_cache
from flashtron.kvcache import flash_attn_with_kvcache
from flashtron.rotary import RotaryEmbedding, apply_rotary_emb, apply_rotary_emb_kv_, apply_rotary_emb_qkv_
from flashtron.sdpa import scaled_dot_product_attention
from flashtron.validation import set_sequence_checks

__version__ = "0.1.0"

__all__ = ["flash_attn_func", "flash_attn_kvpacked_func", "flash_attn_qkvpacked_func", "flash_attn_varlen_func",
           "flash_attn_varlen_kvpacked_func", "flash_attn_varlen_qkvpacked_func", "flash_attn_with_kvcache",
           "set_sequence_checks", "update_kv_cache", "RotaryEmbedding", "apply_rotary_emb", "apply_rotary_emb_kv_",
           "apply_rotary_emb_qkv_", "scaled_dot_product_attention", "__version__"]
