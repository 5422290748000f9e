"""Writing new keys and values into a KV cache, in Triton: one launch rotates k, copies it and v.

Both cache layouts are one addressing scheme.  A paged cache (num_blocks, page_size, heads,
head_dim) maps position p of batch row b to page block_table[b, p // page_size], row p % page_size.
A dense cache (batch_cache, seqlen_cache, heads, head_dim) is the same with one page per sequence:
page_size = seqlen_cache, and the page of row b is cache_batch_idx[b] (or b).  Token t of row b goes
to position cache_seqlens[b] + t; with rotary tables, k is first rotated as the token at that
position (`kernels.rotary.rotate_rows`), and v is copied bit for bit.  A write whose position, page
or page index falls outside the cache is dropped rather than sent past the end of a tensor;
`flashtron.cache_update` rejects such inputs wherever it may read their values.  Nothing here
re-checks user input.
"""

import torch
import triton
import triton.language as tl

from flashtron.kernels import compiled, launch
from flashtron.kernels.rotary import block_rows, copy_columns, device_context, rotate_rows

_MAX_PROGRAMS = 2**31 - 1


@compiled.fast_launch
@triton.jit
def cache_update_kernel(KCache, VCache, K, V, CacheSeqlens, CacheBatchIdx, BlockTable, Cos, Sin,
                        seqlen_new, num_heads, num_m_blocks, head_dim_k, head_dim_v, rotary_half, seqlen_ro,
                        page_size, num_pages, pages_per_seq, stride_table_b,
                        stride_k_b, stride_k_s, stride_k_h, stride_k_d,
                        stride_v_b, stride_v_s, stride_v_h, stride_v_d,
                        stride_kc_b, stride_kc_s, stride_kc_h, stride_kc_d,
                        stride_vc_b, stride_vc_s, stride_vc_h, stride_vc_d,
                        PAGED: tl.constexpr, HAS_BATCH_IDX: tl.constexpr, ROTARY: tl.constexpr,
                        INTERLEAVED: tl.constexpr, UPCAST: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    head = pid % num_heads
    m_block = (pid // num_heads) % num_m_blocks
    batch = pid // (num_heads * num_m_blocks)
    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    positions = tl.load(CacheSeqlens + batch) + rows
    # Pages: positions >= 0 keeps the division well defined; the mask drops the rest.
    safe_positions = tl.maximum(positions, 0)
    page_index = safe_positions // page_size
    row_mask = (rows < seqlen_new) & (positions >= 0) & (page_index < pages_per_seq)
    if PAGED:
        page = tl.load(BlockTable + batch.to(tl.int64) * stride_table_b + page_index, mask=row_mask, other=0)
        page = page.to(tl.int64)
    elif HAS_BATCH_IDX:
        page = tl.load(CacheBatchIdx + batch).to(tl.int64) + tl.zeros([BLOCK_M], dtype=tl.int64)
    else:
        page = batch.to(tl.int64) + tl.zeros([BLOCK_M], dtype=tl.int64)
    row_mask = row_mask & (page >= 0) & (page < num_pages)
    page_row = (safe_positions - page_index * page_size).to(tl.int64)

    k_rows = K + batch.to(tl.int64) * stride_k_b + rows.to(tl.int64) * stride_k_s + head.to(tl.int64) * stride_k_h
    v_rows = V + batch.to(tl.int64) * stride_v_b + rows.to(tl.int64) * stride_v_s + head.to(tl.int64) * stride_v_h
    k_cache_rows = KCache + page * stride_kc_b + page_row * stride_kc_s + head.to(tl.int64) * stride_kc_h
    v_cache_rows = VCache + page * stride_vc_b + page_row * stride_vc_s + head.to(tl.int64) * stride_vc_h

    copy_columns(v_rows, v_cache_rows, row_mask, 0, head_dim_v, stride_v_d, stride_vc_d, BLOCK_D)
    if ROTARY:
        rotate_rows(k_rows, k_cache_rows, row_mask, positions, Cos, Sin, seqlen_ro, rotary_half,
                    stride_k_d, stride_kc_d, INTERLEAVED, False, UPCAST, BLOCK_HALF)
        copy_columns(k_rows, k_cache_rows, row_mask, 2 * rotary_half, head_dim_k, stride_k_d, stride_kc_d, BLOCK_D)
    else:
        copy_columns(k_rows, k_cache_rows, row_mask, 0, head_dim_k, stride_k_d, stride_kc_d, BLOCK_D)


def update_kv_cache(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos, rotary_sin,
                    rotary_interleaved: bool) -> None:
    """Launch `cache_update_kernel` on checked arguments (see `flashtron.cache_update`); any strides for the
    caches, k and v; index tensors int32 and contiguous; rotary tables contiguous or both None."""
    batch, seqlen_new, num_heads = k.shape[0], k.shape[1], k.shape[2]
    if batch == 0 or seqlen_new == 0 or num_heads == 0:
        return
    paged = block_table is not None
    page_size = k_cache.shape[1]
    pages_per_seq = block_table.shape[1] if paged else 1
    rotary = rotary_cos is not None
    seqlen_ro, rotary_half = rotary_cos.shape if rotary else (0, 0)
    block_half = triton.next_power_of_2(max(rotary_half, 1))
    block_m = block_rows(block_half)
    num_m_blocks = triton.cdiv(seqlen_new, block_m)
    programs = batch * num_heads * num_m_blocks
    if programs > _MAX_PROGRAMS:
        raise ValueError(f"problem too large: {programs} programs exceed the grid limit of {_MAX_PROGRAMS}")
    head_dim = max(k.shape[3], v.shape[3])
    with device_context(k):
        cache_update_kernel[(programs,)](
            k_cache, v_cache, k, v, cache_seqlens,
            cache_seqlens if cache_batch_idx is None else cache_batch_idx,
            cache_seqlens if block_table is None else block_table,
            k if rotary_cos is None else rotary_cos, k if rotary_sin is None else rotary_sin,
            seqlen_new, num_heads, num_m_blocks, k.shape[3], v.shape[3], rotary_half, seqlen_ro,
            page_size, k_cache.shape[0], pages_per_seq, block_table.stride(0) if paged else 0,
            *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
            PAGED=paged, HAS_BATCH_IDX=cache_batch_idx is not None, ROTARY=rotary, INTERLEAVED=rotary_interleaved,
            UPCAST=launch.INTERPRET and k.dtype == torch.bfloat16,
            BLOCK_M=block_m, BLOCK_HALF=block_half, BLOCK_D=min(128, triton.next_power_of_2(head_dim)))
