"""xFormers' attention API on flashtron's kernels.

    from flashtron.xformers import memory_efficient_attention, LowerTriangularMask
    out = memory_efficient_attention(q, k, v, attn_bias=LowerTriangularMask())  # q, k, v: [B, M, H, K]

`memory_efficient_attention`, `memory_efficient_attention_partial` and `merge_attentions` take
xFormers' arguments and layouts; the biases of `flashtron.xformers.attn_bias` keep xFormers' names,
fields and masks (top-left `LowerTriangularMask` included) and run as flash-attn windows, varlen
calls, padded or paged keys (`flashtron.xformers.dispatch`).  A bias that flash-attn's arguments
cannot express exactly raises NotImplementedError.
"""

from flashtron.xformers import attn_bias
from flashtron.xformers.attn_bias import (
    AttentionBias,
    BlockDiagonalCausalFromBottomRightMask,
    BlockDiagonalCausalLocalAttentionFromBottomRightMask,
    BlockDiagonalCausalLocalAttentionMask,
    BlockDiagonalCausalLocalAttentionPaddedKeysMask,
    BlockDiagonalCausalMask,
    BlockDiagonalCausalWithOffsetPaddedKeysMask,
    BlockDiagonalLocalAttentionPaddedKeysMask,
    BlockDiagonalMask,
    BlockDiagonalPaddedKeysMask,
    LocalAttentionFromBottomRightMask,
    LowerTriangularFromBottomRightLocalAttentionMask,
    LowerTriangularFromBottomRightMask,
    LowerTriangularMask,
    LowerTriangularMaskWithTensorBias,
    PagedBlockDiagonalCausalWithOffsetPaddedKeysMask,
    PagedBlockDiagonalPaddedKeysMask,
)
from flashtron.xformers.fmha import memory_efficient_attention, memory_efficient_attention_partial
from flashtron.xformers.merge import merge_attentions

__all__ = [
    "AttentionBias",
    "BlockDiagonalCausalFromBottomRightMask",
    "BlockDiagonalCausalLocalAttentionFromBottomRightMask",
    "BlockDiagonalCausalLocalAttentionMask",
    "BlockDiagonalCausalLocalAttentionPaddedKeysMask",
    "BlockDiagonalCausalMask",
    "BlockDiagonalCausalWithOffsetPaddedKeysMask",
    "BlockDiagonalLocalAttentionPaddedKeysMask",
    "BlockDiagonalMask",
    "BlockDiagonalPaddedKeysMask",
    "LocalAttentionFromBottomRightMask",
    "LowerTriangularFromBottomRightLocalAttentionMask",
    "LowerTriangularFromBottomRightMask",
    "LowerTriangularMask",
    "LowerTriangularMaskWithTensorBias",
    "PagedBlockDiagonalCausalWithOffsetPaddedKeysMask",
    "PagedBlockDiagonalPaddedKeysMask",
    "attn_bias",
    "memory_efficient_attention",
    "memory_efficient_attention_partial",
    "merge_attentions",
]
