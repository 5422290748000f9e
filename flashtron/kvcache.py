"""flash_attn_with_kvcache: attention of a few new tokens against a KV cache (decoding).

One call (1) writes the new keys and values into the cache in place, rotated
if rotary tables are given (`flashtron.cache_update`), (2) rotates the queries
at their positions (`flashtron.rotary`) and (3) runs the forward kernel over
the cache: dense (batch_cache, seqlen_cache, Hk, D) rows, through
cache_batch_idx, or pages through block_table, each sequence's keys being rows
[cache_leftpad, cache_seqlens + seqlen_new).  Short batches split each
sequence's keys over several programs (flash-decoding) and merge the partials
through their log-sum-exp.  No step reads a tensor on the host, so the call
is CUDA-graph capturable and traces under torch.compile(fullgraph=True).
"""

import numbers

import torch

from flashtron import ops, validation
from flashtron.cache_update import update_kv_cache
from flashtron.rotary import apply_rotary_emb

_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """Attention of q (batch, seqlen_q, H, D) against a KV cache, with flash-attn 2.x's semantics.

    k_cache, v_cache: (batch_cache, seqlen_cache, Hk, D), or paged (num_blocks, page_size, Hk, D) with
    block_table int32 (batch, max_blocks) (any page_size >= 1).  k, v (batch, seqlen_new, Hk, D): new
    tokens, written in place into the cache at positions cache_seqlens[b] onward before attending.
    cache_seqlens: int or int32 (batch,), the tokens already in the cache (None: the whole cache).
    cache_batch_idx int32 (batch,): cache row of each batch row (dense caches).  cache_leftpad int32
    (batch,): the first cache_leftpad[b] rows of row b are padding.  rotary_cos / rotary_sin
    (seqlen_ro, rotary_dim / 2): applied to the new k and to q at their positions, which are cache rows (as in
    flash-attn the padding counts: new token t goes to row and position cache_seqlens[b] + t); q's tokens all
    sit at position cache_seqlens unless causal or windowed (a window side of at least the cache's rows per
    sequence counts as none, as in flash-attn).
    causal and window_size align bottom-right against cache_seqlens + seqlen_new.  num_splits: 0
    picks a split-KV count from the shape and the GPU, 1 disables splitting, > 1 forces it.

    Returns out (batch, seqlen_q, H, D), and with return_softmax_lse=True also softmax_lse float32
    (batch, H, seqlen_q).  Forward only (inference): the outputs carry no gradient, as flash-attn's.
    """
    paged = block_table is not None
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        # A copy with a unit stride (what check_qkv would make) would take the new tokens instead of the cache.
        if isinstance(cache, torch.Tensor) and cache.dim() == 4 and cache.shape[-1] > 1 and cache.stride(-1) != 1:
            raise ValueError(f"{name} must have a unit stride in its last (head) dimension: the cache is updated in "
                             f"place; got strides {tuple(cache.stride())}")
    q_checked, k_cache, v_cache = validation.check_qkv(q, k_cache, v_cache, ("q", "k_cache", "v_cache"),
                                                       paged=True)
    batch = q.shape[0]
    if not paged and cache_batch_idx is None and k_cache.shape[0] != batch:
        raise ValueError(f"k_cache has {k_cache.shape[0]} batch rows but q has {batch}; pass cache_batch_idx to "
                         "pick cache rows, or a cache with one row per batch row")
    if paged and cache_batch_idx is not None:
        raise ValueError("cache_batch_idx cannot be combined with block_table: a paged cache picks each "
                         "sequence's pages through block_table")
    if paged and cache_leftpad is not None:
        raise NotImplementedError("cache_leftpad with a paged cache (block_table) is not supported")
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (new keys and values) or both left None")
    if k is not None:
        validation.require_tensor("k", k)
        validation.require_tensor("v", v)
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None and k is None:
        raise ValueError("rotary_cos / rotary_sin apply to new keys: pass k and v with them")
    if not isinstance(num_splits, numbers.Integral) or isinstance(num_splits, bool) or num_splits < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0: automatic, 1: no split), got {num_splits!r}")
    validation.check_flag("return_softmax_lse", return_softmax_lse)
    validation.check_flag("rotary_interleaved", rotary_interleaved)
    if paged:
        block_table = validation.check_block_table(block_table, k_cache, batch, 0)
    cache_rows = block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[1]
    seqlen_new = 0 if k is None else k.shape[1]
    cache_seqlens = _cache_seqlens(cache_seqlens, batch, cache_rows, seqlen_new, q.device)
    for name, index in (("cache_batch_idx", cache_batch_idx), ("cache_leftpad", cache_leftpad)):
        if index is not None:
            validation.check_index_tensor(name, index, batch, q.device)
    if (q.device.type == "cpu" or validation.sequence_checks_enabled()) and not torch.compiler.is_compiling():
        if cache_batch_idx is not None:
            validation.check_cache_rows(cache_batch_idx, k_cache.shape[0])
        if cache_leftpad is not None:  # (unchecked, the kernels clamp each row's padding to [0, its keys])
            validation.check_cache_leftpad(cache_leftpad, cache_seqlens)
    softmax_scale = validation.softmax_scale_or_default(softmax_scale, q.shape[-1])
    window_left, window_right = validation.window_bounds(causal, window_size)
    softcap = validation.check_softcap(softcap)
    alibi_slopes = validation.check_alibi_slopes(alibi_slopes, q, batch)
    with torch.no_grad():  # inference only: the outputs carry no gradient, as flash-attn's
        if rotary_cos is not None:
            # flash-attn drops a window side that spans the whole cache before it chooses q's positions.
            one_position = all(side < 0 or side >= cache_rows for side in (window_left, window_right))
            q_checked = _rotate_queries(q_checked, rotary_cos, rotary_sin, cache_seqlens, rotary_interleaved,
                                        tokens_at_one_position=one_position)
        # Everything is checked before the cache changes.
        if k is not None:
            update_kv_cache(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx=cache_batch_idx,
                            block_table=block_table, rotary_cos=rotary_cos, rotary_sin=rotary_sin,
                            rotary_interleaved=rotary_interleaved)

        # Keys of row b: [cache_leftpad[b], cache_seqlens[b] + seqlen_new) (the kernel subtracts the padding).
        # (No new tokens: cache_seqlens itself, which spares a decoding step an elementwise kernel.)
        seqused_k = cache_seqlens + seqlen_new if seqlen_new else cache_seqlens
        out, softmax_lse = ops.attention(
            q_checked, k_cache, v_cache, softmax_scale, window_left, window_right, softcap, alibi_slopes, None, 0.0,
            None, torch.backends.cuda.matmul.allow_tf32, seqused_k=seqused_k, block_table=block_table,
            cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad, num_splits=int(num_splits),
            pack_gqa=True)
    return (out, softmax_lse) if return_softmax_lse else out


def _cache_seqlens(cache_seqlens, batch: int, cache_rows: int, seqlen_new: int, device):
    """cache_seqlens as int32 (batch,) on q's device; an int is checked against the cache's room here
    (a tensor's values are checked where cu_seqlens are: on CPU, or after set_sequence_checks)."""
    if cache_seqlens is None:
        cache_seqlens = cache_rows - seqlen_new
    if isinstance(cache_seqlens, numbers.Integral) and not isinstance(cache_seqlens, bool):
        if not 0 <= cache_seqlens <= cache_rows - seqlen_new:
            raise ValueError(f"cache_seqlens={cache_seqlens} plus {seqlen_new} new tokens does not fit a cache of "
                             f"{cache_rows} rows per sequence")
        return torch.full((batch,), int(cache_seqlens), dtype=torch.int32, device=device)
    validation.check_index_tensor("cache_seqlens", cache_seqlens, batch, device)
    if (device.type == "cpu" or validation.sequence_checks_enabled()) and not torch.compiler.is_compiling():
        if ((cache_seqlens < 0) | (cache_seqlens + seqlen_new > cache_rows)).any():
            raise ValueError(f"cache_seqlens + {seqlen_new} new tokens must lie in [0, {cache_rows}] (the cache's "
                             f"rows per sequence), got cache_seqlens {cache_seqlens.tolist()}")
    return cache_seqlens.contiguous()


def _rotate_queries(q, cos, sin, cache_seqlens, interleaved: bool, tokens_at_one_position: bool):
    """q rotated at positions cache_seqlens + t (causal or windowed), or with every token at position
    cache_seqlens (flash-attn's rule for full attention)."""
    if tokens_at_one_position:
        batch, seqlen_q, num_heads, head_dim = q.shape
        # Tokens as extra heads of a one-token sequence: all at the sequence's offset.
        flat = apply_rotary_emb(q.reshape(batch, 1, seqlen_q * num_heads, head_dim), cos, sin,
                                interleaved=interleaved, seqlen_offsets=cache_seqlens)
        return flat.reshape(q.shape)
    return apply_rotary_emb(q, cos, sin, interleaved=interleaved, seqlen_offsets=cache_seqlens)
