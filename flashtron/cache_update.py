"""Appending new keys and values to a KV cache, in place: the write half of flash_attn_with_kvcache.

`update_kv_cache` writes k and v (batch, seqlen_new, nheads_k, headdim) into the cache at positions
cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1 of each batch row b.  A dense cache
(batch_cache, seqlen_cache, nheads_k, headdim) takes row b in cache row cache_batch_idx[b] (or b); a
paged cache (num_blocks, page_size, nheads_k, headdim), any page_size >= 1, keeps position p of row b
at [block_table[b, p // page_size], p % page_size].  With rotary_cos/rotary_sin, k is rotated first, each
token at the position it is written to (flash-attn's rule, left padding included); v never is.  The way down:
checks here, then the custom op `flashtron::update_kv_cache` (mutates k_cache and v_cache; a fake
implementation for torch.compile), then one Triton launch (`kernels.cache_update`: CUDA tensors, or
CPU tensors under TRITON_INTERPRET=1) or indexed writes in PyTorch (CPU tensors).  Nothing reads a
CUDA tensor on the host, so the call can be captured in a CUDA graph; the value checks (positions
within the cache, pages and cache rows in range) run on CPU tensors, and on CUDA tensors only after
`flashtron.set_sequence_checks(True)`.
"""

from typing import Optional

import torch
from torch import Tensor

from flashtron.kernels import cache_update as kernels
from flashtron.rotary import SUPPORTED_DTYPES, check_cos_sin, host_checks_enabled, rotate_torch, use_triton
from flashtron.validation import require_tensor

_DENSE = "(batch_cache, seqlen_cache, nheads_k, headdim)"
_PAGED = "(num_blocks, page_size, nheads_k, headdim) (block_table given)"


# ----------------------------------------------------------------------------------------------
# The PyTorch engine (CPU tensors).

def _update_torch(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos, rotary_sin,
                  rotary_interleaved) -> None:
    """Same addressing and the same dropped out-of-range writes as the kernel."""
    batch, seqlen_new = k.shape[:2]
    positions = cache_seqlens.long()[:, None] + torch.arange(seqlen_new, device=k.device)[None, :]
    if rotary_cos is not None:
        k = rotate_torch(k, rotary_cos, rotary_sin, positions, rotary_interleaved)
    page_size = k_cache.shape[1]
    page_index = positions.clamp(min=0) // page_size
    if block_table is not None:
        pages_per_seq = block_table.shape[1]
        pages = block_table.long().gather(1, page_index.clamp(max=pages_per_seq - 1))
    else:
        pages_per_seq = 1
        rows = torch.arange(batch, device=k.device) if cache_batch_idx is None else cache_batch_idx.long()
        pages = rows[:, None].expand(batch, seqlen_new)
    keep = (positions >= 0) & (page_index < pages_per_seq) & (pages >= 0) & (pages < k_cache.shape[0])
    page_rows = positions - page_index * page_size
    k_cache[pages[keep], page_rows[keep]] = k[keep]
    v_cache[pages[keep], page_rows[keep]] = v[keep]


# ----------------------------------------------------------------------------------------------
# The custom op.

@torch.library.custom_op("flashtron::update_kv_cache", mutates_args=("k_cache", "v_cache"))
def update_kv_cache_op(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor, cache_seqlens: Tensor,
                       cache_batch_idx: Optional[Tensor], block_table: Optional[Tensor],
                       rotary_cos: Optional[Tensor], rotary_sin: Optional[Tensor], rotary_interleaved: bool) -> None:
    """Writes k (rotated when rotary_cos is given) and v into the caches; arguments already checked, but for the
    values of the index tensors: checked here, so that under torch.compile (whose tracing sees no values) they are
    checked when the graph runs."""
    if host_checks_enabled(k):
        capacity = k_cache.shape[1] * (1 if block_table is None else block_table.shape[1])
        _check_values_on_host(k_cache, k.shape[1], cache_seqlens, cache_batch_idx, block_table, capacity)
    engine = kernels.update_kv_cache if use_triton(k) else _update_torch
    engine(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos, rotary_sin,
           rotary_interleaved)


@update_kv_cache_op.register_fake
def _(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos, rotary_sin, rotary_interleaved):
    return None


# ----------------------------------------------------------------------------------------------
# Checks.

def _check_index(name: str, t, shape: tuple, what: str, device: torch.device) -> Tensor:
    require_tensor(name, t)
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {what} = {shape}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on k_cache's device {device}, got {t.device}")
    return t.contiguous()


def _check_tensors(k_cache, v_cache, k, v, paged: bool) -> None:
    layout = _PAGED if paged else _DENSE
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v)):
        require_tensor(name, t)
        if t.dim() != 4:
            what = layout if name.endswith("cache") else "(batch, seqlen_new, nheads_k, headdim)"
            raise ValueError(f"{name} must have 4 dimensions {what}, got shape {tuple(t.shape)}")
    device = k_cache.device
    if device.type not in ("cuda", "cpu"):
        raise NotImplementedError(f"k_cache is on device {device}; flashtron runs on CUDA GPUs and on the CPU")
    for name, t in (("v_cache", v_cache), ("k", k), ("v", v)):
        if t.device != device:
            raise ValueError(f"{name} must be on k_cache's device {device}, got {t.device}")
    if k_cache.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"k_cache has dtype {k_cache.dtype}; supported dtypes are float16, bfloat16 and float32")
    for name, t in (("v_cache", v_cache), ("k", k), ("v", v)):
        if t.dtype != k_cache.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, but k_cache has dtype {k_cache.dtype}; they must match")
    if v_cache.shape[:3] != k_cache.shape[:3]:
        raise ValueError(f"k_cache and v_cache must agree in their first three dimensions {layout}, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k and v must agree in (batch, seqlen_new, nheads_k), got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k.shape[2] != k_cache.shape[2]:
        raise ValueError(f"k has {k.shape[2]} heads but k_cache has {k_cache.shape[2]} (nheads_k); they must match")
    for name, new, cache in (("k", k, "k_cache"), ("v", v, "v_cache")):
        cache_dim = (k_cache if name == "k" else v_cache).shape[3]
        if new.shape[3] != cache_dim:
            raise ValueError(f"{name} has head dim {new.shape[3]} but {cache} has {cache_dim}; they must match")
    if k_cache.shape[1] < 1:
        what = "page_size" if paged else "seqlen_cache"
        raise ValueError(f"k_cache must have {what} (dimension 1) >= 1, got shape {tuple(k_cache.shape)}")


def _check_values_on_host(k_cache, seqlen_new, cache_seqlens, cache_batch_idx, block_table, capacity: int) -> None:
    """Checks that read index tensors: every write lands inside the cache."""
    seqlens = cache_seqlens.tolist()
    bad = [s for s in seqlens if s < 0 or s + seqlen_new > capacity]
    if bad:
        raise ValueError(f"cache_seqlens must hold values s with 0 <= s and s + seqlen_new <= {capacity} (the "
                         f"cache's length per sequence) for seqlen_new = {seqlen_new}, got {seqlens}")
    if cache_batch_idx is not None:
        rows = cache_batch_idx.tolist()
        if any(r < 0 or r >= k_cache.shape[0] for r in rows):
            raise ValueError(f"cache_batch_idx must hold cache rows in [0, {k_cache.shape[0]}), got {rows}")
    if block_table is not None and seqlen_new > 0:
        page_size, num_blocks = k_cache.shape[1], k_cache.shape[0]
        table = block_table.tolist()
        for b, s in enumerate(seqlens):
            # Only the pages this call writes must be valid; the rest of the row may hold padding.
            used = table[b][s // page_size:(s + seqlen_new - 1) // page_size + 1]
            if any(p < 0 or p >= num_blocks for p in used):
                raise ValueError(f"block_table[{b}] points outside the {num_blocks} cache blocks at the pages "
                                 f"written (positions {s} to {s + seqlen_new - 1}): {used}")


# ----------------------------------------------------------------------------------------------
# Public function.

def update_kv_cache(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor, cache_seqlens: Tensor,
                    cache_batch_idx: Optional[Tensor] = None, block_table: Optional[Tensor] = None,
                    rotary_cos: Optional[Tensor] = None, rotary_sin: Optional[Tensor] = None,
                    rotary_interleaved: bool = True) -> None:
    """Write k and v into k_cache and v_cache in place (flash_attn_with_kvcache's append), rotating k first when
    rotary_cos and rotary_sin are given.

    k, v: (batch, seqlen_new, nheads_k, headdim).  cache_seqlens: int32 (batch,), the tokens already in each
    sequence; the new ones go to positions cache_seqlens[b] + t.  Dense caches (batch_cache, seqlen_cache,
    nheads_k, headdim): row b writes into cache row cache_batch_idx[b] (int32 (batch,)), or b when None.  Paged
    caches (num_blocks, page_size, nheads_k, headdim) with block_table int32 (batch, max_blocks_per_seq):
    position p of row b is k_cache[block_table[b, p // page_size], p % page_size].  rotary_cos, rotary_sin:
    (seqlen_ro, rotary_dim / 2), k's dtype, seqlen_ro >= the cache's length per sequence; token t of row b is
    rotated as position cache_seqlens[b] + t, where it is written (flash-attn's rule: a left-padded sequence's
    positions count its padding), pairs (2j, 2j + 1) when rotary_interleaved else (j, j + rotary_dim / 2).  v is
    never rotated.
    """
    paged = block_table is not None
    _check_tensors(k_cache, v_cache, k, v, paged)
    device = k_cache.device
    batch, seqlen_new = k.shape[0], k.shape[1]
    cache_seqlens = _check_index("cache_seqlens", cache_seqlens, (batch,), "(batch,)", device)
    if paged:
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx and block_table cannot be used together: a paged cache (block_table) "
                             "addresses pages per sequence, not cache rows; pass one of them")
        require_tensor("block_table", block_table)
        if block_table.dim() != 2 or block_table.shape[0] != batch or block_table.shape[1] < 1:
            raise ValueError(f"block_table must have shape (batch, max_blocks_per_seq) = ({batch}, >= 1), got "
                             f"{tuple(block_table.shape)}")
        block_table = _check_index("block_table", block_table, tuple(block_table.shape),
                                   "(batch, max_blocks_per_seq)", device)
        capacity = block_table.shape[1] * k_cache.shape[1]
    else:
        if cache_batch_idx is not None:
            cache_batch_idx = _check_index("cache_batch_idx", cache_batch_idx, (batch,), "(batch,)", device)
        elif k_cache.shape[0] < batch:
            raise ValueError(f"k_cache holds {k_cache.shape[0]} sequences, fewer than the batch {batch} of k; pass "
                             "cache_batch_idx to map batch rows to cache rows, or a larger cache")
        capacity = k_cache.shape[1]
    if seqlen_new > capacity:
        raise ValueError(f"k has seqlen_new = {seqlen_new} tokens, more than the cache holds per sequence "
                         f"({capacity})")
    if not isinstance(rotary_interleaved, bool):
        raise TypeError(f"rotary_interleaved must be a bool, got {type(rotary_interleaved).__name__}")
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together (or neither, for no rotary embedding)")
    if rotary_cos is not None:
        rotary_cos, rotary_sin = check_cos_sin(rotary_cos, rotary_sin, k.shape[3], k.dtype, device,
                                               names=("rotary_cos", "rotary_sin"), against="k")
        if rotary_cos.shape[0] < capacity:
            raise ValueError(f"rotary_cos/rotary_sin have {rotary_cos.shape[0]} positions, fewer than the cache's "
                             f"length per sequence ({capacity}); they must cover every position of the cache")
    update_kv_cache_op(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx, block_table, rotary_cos, rotary_sin,
                       rotary_interleaved)
