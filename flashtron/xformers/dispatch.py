"""How each xFormers bias runs on flashtron's kernels: a `Plan` of flash-attn keyword arguments.

Dense biases become `flash_attn_func` windows (plus `attn_bias=` for tensors); block-diagonal ones
become `flash_attn_varlen_func` calls (cu_seqlens, seqused_k for padded keys, block_table for paged
caches).  flash-attn's windows are aligned to the bottom-right corner of each (query, used key)
block; xFormers' top-left masks are rewritten exactly into that form (see `_flash_window`), and a
case that has no exact form raises NotImplementedError rather than running something else.
Inputs here are already in flash layout: q (B, Mq, H, K), k (B, Mk, Hk, K).
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from flashtron.xformers import attn_bias as xb

_DENSE = (xb.LowerTriangularMask, xb.LowerTriangularMaskWithTensorBias, xb.LowerTriangularFromBottomRightMask,
          xb.LowerTriangularFromBottomRightLocalAttentionMask, xb.LocalAttentionFromBottomRightMask)
_BLOCK_DIAGONAL = (xb.BlockDiagonalMask, xb.BlockDiagonalCausalMask, xb.BlockDiagonalCausalFromBottomRightMask,
                   xb.BlockDiagonalCausalLocalAttentionMask, xb.BlockDiagonalCausalLocalAttentionFromBottomRightMask)
_PADDED_KEYS = (xb.BlockDiagonalPaddedKeysMask, xb.BlockDiagonalCausalWithOffsetPaddedKeysMask,
                xb.BlockDiagonalCausalLocalAttentionPaddedKeysMask, xb.BlockDiagonalLocalAttentionPaddedKeysMask)
_PAGED = (xb.PagedBlockDiagonalPaddedKeysMask, xb.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask)
SUPPORTED_BIAS_TYPES = (type(None), torch.Tensor) + _DENSE + _BLOCK_DIAGONAL + _PADDED_KEYS + _PAGED


@dataclass
class VarlenArguments:
    """flash_attn_varlen_func's sequence arguments; with page_size set, keys are paged."""

    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    seqused_k: Optional[torch.Tensor] = None
    block_table: Optional[torch.Tensor] = None
    page_size: Optional[int] = None


@dataclass
class Plan:
    """window_size as flash-attn takes it; num_keys (dense only) keeps the first num_keys keys, those
    past it being masked for every query; tensor_bias (B|1, H|1, Mq|1, Mk|1) is added to the scores."""

    window_size: Tuple[int, int] = (-1, -1)
    num_keys: Optional[int] = None
    tensor_bias: Optional[torch.Tensor] = None
    varlen: Optional[VarlenArguments] = None


def _flash_window(band: "xb._Band", num_queries: int, num_keys: int) -> Tuple[int, int, int]:
    """(window_left, window_right, used_keys): the band as a flash-attn window over the first
    used_keys keys of a block, aligned to the bottom-right corner (diagonal used_keys - num_queries).

    The band reads -left <= j - i - diagonal <= right.  A top-left band (diagonal 0) becomes a
    bottom-right one by moving both edges by used_keys - num_queries.  Its right edge would go
    negative when there are more keys than queries can reach (flash-attn has no negative windows),
    but those keys, past num_queries - 1 + right, are seen by no query: dropping them is exact and
    brings the right edge back to >= 0.
    """
    used_keys = num_keys
    if not band.from_bottom_right and band.right is not None:
        used_keys = min(num_keys, num_queries + band.right)
    shift = band.diagonal(num_queries, used_keys) - (used_keys - num_queries)
    left = -1 if band.left is None else band.left - shift
    right = -1 if band.right is None else band.right + shift
    if (band.left is not None and left < 0) or (band.right is not None and right < 0):
        raise NotImplementedError(
            f"a block of {num_queries} queries and {num_keys} keys under band {band} has no flash-attn "
            "window form (it would need a negative window edge)")
    return left, right, used_keys


def _check_packed(name: str, t: torch.Tensor, total: int, bias) -> None:
    if t.shape[0] != 1:
        raise ValueError(f"{type(bias).__name__} packs the sequences along dimension 1 and needs batch size 1; "
                         f"{name} has shape {tuple(t.shape)}")
    if t.shape[1] != total:
        raise ValueError(f"{type(bias).__name__} describes {total} {name} positions in all, but {name} has "
                         f"{t.shape[1]} (shape {tuple(t.shape)})")


def _check_device(bias, *tensors: torch.Tensor, device: torch.device) -> None:
    for t in tensors:
        if t.device != device:
            raise ValueError(f"{type(bias).__name__} holds its sequence tensors on {t.device} but query is on "
                             f"{device}; build it with device=... or call .to(query.device)")


def plan(bias, q: torch.Tensor, k: torch.Tensor, tensor_bias: Optional[torch.Tensor]) -> Plan:
    """The Plan for `bias` with q, k in flash layout.  tensor_bias is the dense bias (of a tensor
    attn_bias, or of LowerTriangularMaskWithTensorBias) already shaped (B|1, H|1, Mq|1, Mk|1)."""
    kind = type(bias)
    if bias is None or isinstance(bias, torch.Tensor):
        return Plan(tensor_bias=tensor_bias)
    if kind in _DENSE:
        return _dense_plan(bias, q.shape[1], k.shape[1], tensor_bias)
    if kind in _BLOCK_DIAGONAL:
        return _block_diagonal_plan(bias, q, k)
    if kind in _PADDED_KEYS:
        return _padded_keys_plan(bias, q, k)
    if kind in _PAGED:
        return _paged_plan(bias, q, k)
    supported = ", ".join(t.__name__ for t in SUPPORTED_BIAS_TYPES[2:])
    raise NotImplementedError(f"attn_bias of type {kind.__name__} is not supported; supported: None, a "
                              f"torch.Tensor, {supported}")


def _dense_plan(bias, num_queries: int, num_keys: int, tensor_bias) -> Plan:
    left, right, used_keys = _flash_window(bias._band, num_queries, num_keys)
    if used_keys < num_keys and tensor_bias is not None and tensor_bias.shape[-1] != 1:
        tensor_bias = tensor_bias[..., :used_keys]
    return Plan(window_size=(left, right), num_keys=used_keys if used_keys < num_keys else None,
                tensor_bias=tensor_bias)


def _common_window(bias, q_lengths: List[int], k_lengths: List[int]) -> Tuple[Tuple[int, int], List[int]]:
    """One window for all blocks (flash_attn_varlen_func takes one) and each block's used keys."""
    windows, used = {}, []
    for block, (num_queries, num_keys) in enumerate(zip(q_lengths, k_lengths)):
        left, right, used_keys = _flash_window(bias._band, num_queries, num_keys)
        used.append(used_keys)
        if num_queries > 0 and used_keys > 0:  # a block with no query or no key has nothing to mask
            windows.setdefault((left, right), block)
    if len(windows) > 1:
        raise NotImplementedError(
            f"{type(bias).__name__} with blocks of {q_lengths} queries and {k_lengths} keys: its top-left "
            f"alignment needs a different flash-attn window per block ({sorted(windows)}), and "
            "flash_attn_varlen_func takes one; use blocks of equal max(num_queries - num_keys, 0), or the "
            "...FromBottomRight form")
    return next(iter(windows), (-1, -1)), used


def _block_diagonal_plan(bias, q: torch.Tensor, k: torch.Tensor) -> Plan:
    q_info, k_info = bias.q_seqinfo, bias.k_seqinfo
    _check_packed("query", q, q_info.seqstart_py[-1], bias)
    _check_packed("key", k, k_info.seqstart_py[-1], bias)
    _check_device(bias, q_info.seqstart, k_info.seqstart, device=q.device)
    q_lengths, k_lengths = q_info.seqlens_py(), k_info.seqlens_py()
    window, used = _common_window(bias, q_lengths, k_lengths)
    seqused_k = None
    if used != k_lengths:
        # Only for top-left masks: keys that no query of their block reaches are left out.
        seqused_k = torch.tensor(used, dtype=torch.int32, device=q.device)
    return Plan(window_size=window, varlen=VarlenArguments(
        cu_seqlens_q=q_info.seqstart, cu_seqlens_k=k_info.seqstart, max_seqlen_q=q_info.max_seqlen,
        max_seqlen_k=k_info.max_seqlen, seqused_k=seqused_k))


def _padded_keys_plan(bias, q: torch.Tensor, k: torch.Tensor) -> Plan:
    q_info, k_info = bias.q_seqinfo, bias.k_seqinfo
    _check_packed("query", q, q_info.seqstart_py[-1], bias)
    _check_packed("key", k, k_info.seqstart_py[-1], bias)
    _check_device(bias, q_info.seqstart, k_info.seqstart, k_info.seqlen, device=q.device)
    window, _ = _common_window(bias, q_info.seqlens_py(), k_info.seqlen_py)
    # Keys of sequence b start at seqstart[b] (a multiple of the padding); seqlen[b] are used.
    # max_seqlen_k bounds the lengths cu_seqlens_k describes, the padding.
    return Plan(window_size=window, varlen=VarlenArguments(
        cu_seqlens_q=q_info.seqstart, cu_seqlens_k=k_info.seqstart, max_seqlen_q=q_info.max_seqlen,
        max_seqlen_k=k_info.padding, seqused_k=k_info.seqlen))


def _paged_plan(bias, q: torch.Tensor, k: torch.Tensor) -> Plan:
    q_info, k_info = bias.q_seqinfo, bias.k_seqinfo
    _check_packed("query", q, q_info.seqstart_py[-1], bias)
    if k.shape[0] != 1 or k.shape[1] % bias.page_size != 0:
        raise ValueError(f"{type(bias).__name__} needs key and value as [1, num_pages * page_size, ...] with "
                         f"page_size={bias.page_size}; key has shape {tuple(k.shape)}")
    num_sequences = len(k_info.seqlen_py)
    if bias.block_tables.dim() != 2 or bias.block_tables.shape[0] != num_sequences:
        raise ValueError(f"block_tables must have shape ({num_sequences}, max_pages), one row per sequence, "
                         f"got {tuple(bias.block_tables.shape)}")
    _check_device(bias, q_info.seqstart, k_info.seqlen, bias.block_tables, device=q.device)
    window, _ = _common_window(bias, q_info.seqlens_py(), k_info.seqlen_py)
    # flash-attn's paged convention: cu_seqlens_k accumulates the used lengths; block_table
    # alone says where the keys are.
    cu_seqlens_k = torch.nn.functional.pad(torch.cumsum(k_info.seqlen, 0, dtype=torch.int32), (1, 0))
    return Plan(window_size=window, varlen=VarlenArguments(
        cu_seqlens_q=q_info.seqstart, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=q_info.max_seqlen,
        max_seqlen_k=k_info.max_seqlen, block_table=bias.block_tables, page_size=bias.page_size))
