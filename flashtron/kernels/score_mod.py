"""From raw q.k products to the logits the softmax sees: scale, soft-capping, ALiBi, bias.

    s = (q . k) * softmax_scale
    s = softcap * tanh(s / softcap)              if SOFTCAP
    s = s - slope * |i + seqlen_k - seqlen_q - j|   if ALIBI   (query i, key j)
    s = s + bias[i, j]                           if BIAS    (a tile the caller loaded)

`logits_log2` returns s in base 2 (times log2(e)), for exp2, and the factor
d(s)/d(scaled score) the backward needs (1 - tanh^2 under soft-capping).  With
neither variant the logits are one multiply of the raw scores; the forward
folds even that into its exp2 (see FOLD_SCALE in kernels.forward).

Index tensors come pre-shaped by the caller ((BLOCK, 1) and (1, BLOCK), in
either orientation), so the same helper serves the transposed dK/dV tiles.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def tanh(x):
    """tanh in fp32 from exp2 (libdevice's does not run under Triton's interpreter).
    Near 0, where 1 - exp(-2|x|) would cancel, an odd polynomial takes over."""
    magnitude = tl.abs(x)
    e = tl.math.exp2(-2.0 * LOG2E * magnitude)
    far = (1.0 - e) / (1.0 + e)
    x2 = x * x
    near = magnitude * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 - x2 * 0.05396825396825397)))
    t = tl.where(magnitude < 0.0625, near, far)
    return tl.where(x < 0, -t, t)


@triton.jit
def logits_log2(raw, query_idx, key_idx, key_offset, softmax_scale, qk_scale_log2, softcap, slope, bias,
                SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, BIAS: tl.constexpr):
    """Return (base-2 logits, d logits / d scaled scores) for a tile of raw scores."""
    if SOFTCAP or ALIBI or BIAS:
        scores = raw * softmax_scale
        slope_of_cap = 1.0
        if SOFTCAP:
            capped = tanh(scores / softcap)
            scores = softcap * capped
            slope_of_cap = 1.0 - capped * capped
        if ALIBI:
            scores = scores - slope * tl.abs(query_idx + key_offset - key_idx).to(tl.float32)
        if BIAS:
            scores = scores + bias
        logits = scores * LOG2E
    else:
        logits = raw * qk_scale_log2
        slope_of_cap = 1.0
    return logits, slope_of_cap


@triton.jit
def alibi_slope(Alibi, stride_alibi_b, batch, head, ALIBI: tl.constexpr):
    """The ALiBi slope of (batch, head); slopes of shape (H,) have batch stride 0.  `head` may be a
    (BLOCK_M, 1) column of heads (packed GQA): the slopes then broadcast along the rows."""
    slope = 0.0
    if ALIBI:
        slope = tl.load(Alibi + batch.to(tl.int64) * stride_alibi_b + head)
    return slope


@triton.jit
def bias_tile(bias_ptrs, row_in, col_in, BIAS: tl.constexpr):
    """The bias tile at bias_ptrs in float32, 0 outside row_in x col_in; 0.0 without BIAS."""
    bias = 0.0
    if BIAS:
        bias = tl.load(bias_ptrs, mask=row_in[:, None] & col_in[None, :], other=0.0).to(tl.float32)
    return bias
