"""The public functions, with flash-attn 2.x's names, argument order and defaults.

Each validates and normalises its arguments once (`flashtron.validation`) and
calls the custom op (`flashtron.ops`), which autograd and torch.compile see.
Layout is (batch, seqlen, num_heads, head_dim); the packed forms are views of
the same call, so their gradients flow back into the packed tensor.
"""

import torch

from flashtron import ops, validation


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *, sinks=None,
                    attn_bias=None, q_descale=None, k_descale=None, v_descale=None):
    """Exact attention softmax(q k^T * softmax_scale) v, computed blockwise.

    q: (batch, seqlen_q, num_heads, head_dim); k, v: (batch, seqlen_k, num_heads_k, head_dim),
    with num_heads a multiple of num_heads_k (MQA/GQA); float16, bfloat16 or float32; head_dim
    from 1 to 256.  causal masks align to the bottom-right corner when seqlen_q != seqlen_k:
    query i sees key j iff j <= i + seqlen_k - seqlen_q.  A query that sees no key gets output 0.
    window_size=(left, right) restricts query i to keys [i + Sk - Sq - left, i + Sk - Sq + right]
    (-1: unbounded); softcap > 0 maps scores to softcap * tanh(score / softcap); alibi_slopes (H,) or
    (B, H) float32 subtracts slope * |i + Sk - Sq - j|; sinks (H,) float32 adds one logit per head to
    every row's softmax denominator; dropout_p drops probabilities (seeded from torch's generator);
    attn_bias (keyword), a float tensor broadcastable to (batch, num_heads, seqlen_q, seqlen_k), is
    added to the logits inside the kernels (after soft-capping; -inf masks) and gets its gradient.
    FP8 (forward only, as in FlashAttention-3): q, k, v of dtype torch.float8_e4m3fn with q_descale,
    k_descale, v_descale float32 (batch, num_heads_k) (true value = fp8 value x descale; None is 1);
    the output is bfloat16.
    float32 inputs are computed in full float32 unless torch.set_float32_matmul_precision allows
    tf32 ("high" or "medium").  On Hopper GPUs the default backward sums dQ with float32 atomics (its
    last bits may differ between runs); deterministic=True gives bit-for-bit reproducible gradients.

    Returns out (the shape and dtype of q); with return_attn_probs=True, (out, softmax_lse, S_dmask)
    where softmax_lse is float32 (batch, num_heads, seqlen_q) in natural log (+inf where a query
    sees no key) and S_dmask is None, or with dropout the (B, H, Sq, Sk) probabilities with dropped
    entries negated.
    """
    return _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                      deterministic, return_attn_probs, sinks, names=("q", "k", "v"), attn_bias=attn_bias,
                      descales=(q_descale, k_descale, v_descale))


def _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
               deterministic, return_attn_probs, sinks, names, sequences=None, attn_bias=None, block_table=None,
               descales=(None, None, None), packed=None):
    """The shared body.  sequences: None (dense), or the raw variable-length arguments
    (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q, seqused_k); block_table
    (variable-length only) pages k and v; packed: (qkv or kv, the dim that packs them), for ops.attention."""
    varlen = sequences is not None
    paged = block_table is not None
    q, k, v = validation.check_qkv(q, k, v, names, varlen=varlen, paged=paged, allow_fp8=True)
    layout = {}
    batch = q.shape[0]
    if varlen:
        (batch, max_seqlen_q, max_seqlen_k, cu_seqlens_q, cu_seqlens_k, seqused_q,
         seqused_k) = validation.check_sequences(*sequences[:4], q, k, *sequences[4:], paged=paged)
        layout = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, seqused_q=seqused_q,
                      seqused_k=seqused_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
        if paged:
            if seqused_k is not None:
                raise NotImplementedError("seqused_k with block_table is not supported: with paged keys, "
                                          "cu_seqlens_k already gives each sequence's key count")
            layout["block_table"] = validation.check_block_table(block_table, k, batch, max_seqlen_k)
    softmax_scale = validation.softmax_scale_or_default(softmax_scale, q.shape[-1])
    window_left, window_right = validation.window_bounds(causal, window_size)
    dropout_p = validation.check_dropout(dropout_p)
    softcap = validation.check_softcap(softcap)
    alibi_slopes = validation.check_alibi_slopes(alibi_slopes, q, batch)
    sinks = validation.check_sinks(sinks, q)
    if not varlen:
        attn_bias = validation.check_attn_bias(attn_bias, q, k)
    descale = validation.check_descales(*descales, q, batch, k.shape[-2])
    if descale is not None and (dropout_p > 0 or attn_bias is not None or block_table is not None):
        raise NotImplementedError("float8_e4m3fn inputs support causal, windows, softcap, ALiBi, sinks, GQA and "
                                  "varlen; not dropout_p > 0, attn_bias or block_table")
    validation.check_flag("deterministic", deterministic)
    validation.check_flag("return_attn_probs", return_attn_probs)
    # torch.set_float32_matmul_precision("high") sets this flag; reading it (unlike the
    # precision string) traces under torch.compile without a graph break.
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    dropout_seed = ops.dropout_seed(dropout_p, q.device)
    out, softmax_lse = ops.attention(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
                                     dropout_p, dropout_seed, allow_tf32, **layout, attn_bias=attn_bias,
                                     descale=descale, deterministic=deterministic, packed=packed)
    if return_attn_probs:
        s_dmask = None
        if dropout_p > 0 and paged:
            raise NotImplementedError("return_attn_probs with dropout_p > 0 and block_table is not supported")
        if dropout_p > 0:
            # A diagnostic, not differentiable (as in flash-attn).
            s_dmask = ops.dropout_probabilities(q.detach(), k.detach(), softmax_lse.detach(), softmax_scale,
                                                window_left, window_right, softcap, alibi_slopes, dropout_p,
                                                dropout_seed, **layout, attn_bias=attn_bias)
        return out, softmax_lse, s_dmask
    return out


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                              sinks=None, attn_bias=None):
    """flash_attn_func with q, k, v packed as qkv (batch, seqlen, 3, num_heads, head_dim)."""
    validation.check_packed("qkv", qkv, 5, 2, 3, "(batch, seqlen, 3, num_heads, head_dim)")
    return _attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal,
                      window_size, softcap, alibi_slopes, deterministic, return_attn_probs, sinks,
                      names=("qkv", "qkv", "qkv"), attn_bias=attn_bias, packed=(qkv, 2))


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
                             sinks=None, attn_bias=None):
    """flash_attn_func with k, v packed as kv (batch, seqlen_k, 2, num_heads_k, head_dim)."""
    validation.check_packed("kv", kv, 5, 2, 2, "(batch, seqlen_k, 2, num_heads_k, head_dim)")
    return _attention(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal,
                      window_size, softcap, alibi_slopes, deterministic, return_attn_probs, sinks,
                      names=("q", "kv", "kv"), attn_bias=attn_bias, packed=(kv, 2))


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *, seqused_q=None,
                           seqused_k=None, sinks=None, q_descale=None, k_descale=None, v_descale=None):
    """flash_attn_func on a batch of sequences of different lengths, packed without padding.

    q (total_q, H, D), k and v (total_k, Hk, D); sequence b holds rows [cu_seqlens_q[b], cu_seqlens_q[b+1])
    of q and [cu_seqlens_k[b], cu_seqlens_k[b+1]) of k and v; cu_seqlens are int32 (B + 1,), and
    max_seqlen_q / max_seqlen_k bound the lengths (a larger bound is fine, a smaller one is an error).
    Every variant applies per sequence; causal masks and windows align bottom-right within each.
    seqused_q / seqused_k (keyword, int32 (B,), as in FlashAttention-3): only the first seqused[b]
    tokens of each sequence take part; other query rows get output 0 and lse +inf, other keys
    gradient 0.  softmax_lse is float32 (H, total_q).  No host synchronisation: the value checks of
    cu_seqlens need one and run only on CPU tensors or after flashtron.set_sequence_checks(True).
    block_table (int32 (B, pages per sequence)) pages the keys: k and v are then
    (num_pages, page_size, Hk, D), any page_size >= 1, and key position p of sequence b is row
    p % page_size of page block_table[b, p // page_size]; cu_seqlens_k accumulates the key counts.
    Paged calls are forward only (inference), as in flash-attn.  FP8 inputs (float8_e4m3fn, with
    q_descale / k_descale / v_descale (batch, num_heads_k)) are forward only, as in flash_attn_func.
    """
    return _attention(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                      deterministic, return_attn_probs, sinks, names=("q", "k", "v"),
                      sequences=(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q, seqused_k),
                      block_table=block_table, descales=(q_descale, k_descale, v_descale))


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, *, sinks=None):
    """flash_attn_varlen_func with q, k, v packed as qkv (total, 3, num_heads, head_dim)."""
    validation.check_packed("qkv", qkv, 4, 1, 3, "(total_tokens, 3, num_heads, head_dim)")
    return _attention(qkv[:, 0], qkv[:, 1], qkv[:, 2], dropout_p, softmax_scale, causal, window_size, softcap,
                      alibi_slopes, deterministic, return_attn_probs, sinks, names=("qkv", "qkv", "qkv"),
                      sequences=(cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, None, None), packed=(qkv, 1))


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False, *, sinks=None):
    """flash_attn_varlen_func with k, v packed as kv (total_k, 2, num_heads_k, head_dim)."""
    validation.check_packed("kv", kv, 4, 1, 2, "(total_tokens, 2, num_heads_k, head_dim)")
    return _attention(q, kv[:, 0], kv[:, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                      alibi_slopes, deterministic, return_attn_probs, sinks, names=("q", "kv", "kv"),
                      sequences=(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, None, None),
                      packed=(kv, 1))
