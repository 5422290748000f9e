"""Where each rank's part of the global sequence lies, and how to cut a tensor into parts and back.

Two layouts of a global sequence of length S over W ranks, each rank holding S / W positions:
"contiguous" gives rank r the positions [r S/W, (r + 1) S/W); "zigzag" cuts the sequence into 2W
chunks of S / 2W and gives rank r chunks r and 2W - 1 - r, concatenated in that order, so that
under a causal mask every rank has the same amount of work (ring-flash-attn's zigzag).
A rank's part is described by `Segment`s: runs of consecutive global positions, in the order
they sit in the rank's local tensor.  `shard` is differentiable (slices and a concatenation);
`gather` collects the parts with all_gather and is not.  A packed variable-length batch
(total_tokens, ...) with cu_seqlens has one layout: every sequence cut into W contiguous pieces,
rank r holding piece r of each, packed in batch order (`varlen_shard`, `varlen_unshard`,
`varlen_gather`); each sequence's length must then be a multiple of W.
"""

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

LAYOUTS = ("contiguous", "zigzag")


class Segment(NamedTuple):
    """Global positions [start, start + length), held at local positions [offset, offset + length)."""
    start: int
    length: int
    offset: int


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(repr(name) for name in LAYOUTS)}, got {layout!r}")
    return layout


def chunks_per_rank(layout: str) -> int:
    """How many equal chunks of the global sequence a rank holds."""
    return 2 if layout == "zigzag" else 1


def local_segments(rank: int, world_size: int, seqlen_local: int, layout: str) -> tuple:
    """The segments of the global sequence that `rank` holds, in local order."""
    if layout == "contiguous":
        return (Segment(rank * seqlen_local, seqlen_local, 0),)
    chunk = seqlen_local // 2
    return (Segment(rank * chunk, chunk, 0), Segment((2 * world_size - 1 - rank) * chunk, chunk, chunk))


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) = [0, {world_size}), got {rank}")


def _check_divisible(name: str, length: int, world_size: int, layout: str, dim: int) -> None:
    parts = world_size * chunks_per_rank(layout)
    if length % parts != 0:
        raise ValueError(f"{name} has length {length} in dimension {dim}, which the {layout} layout over "
                         f"{world_size} ranks cannot split: it must be a multiple of {parts}")


def shard(x: torch.Tensor, rank: int, world_size: int, layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """Rank `rank`'s part of the global tensor `x` along `dim` (the sequence of (B, S, H, D) by default).

    Differentiable: the gradient of the part flows back into x.  A copy for zigzag, a view
    (x.narrow) for contiguous.
    """
    check_layout(layout)
    _check_rank(rank, world_size)
    length = x.shape[dim]
    _check_divisible("x", length, world_size, layout, dim)
    pieces = [x.narrow(dim, seg.start, seg.length)
              for seg in local_segments(rank, world_size, length // world_size, layout)]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


def unshard(parts, layout: str = "zigzag", dim: int = 1) -> torch.Tensor:
    """The global tensor from every rank's part (a list in rank order): the inverse of `shard`."""
    check_layout(layout)
    world_size = len(parts)
    seqlen_local = parts[0].shape[dim]
    pieces = [None] * (world_size * chunks_per_rank(layout))
    chunk = seqlen_local // chunks_per_rank(layout)
    if chunk == 0:
        return torch.cat(list(parts), dim=dim)
    for rank, part in enumerate(parts):
        for seg in local_segments(rank, world_size, seqlen_local, layout):
            pieces[seg.start // chunk] = part.narrow(dim, seg.offset, seg.length)
    return torch.cat(pieces, dim=dim)


def gather(local: torch.Tensor, group: Optional[dist.ProcessGroup] = None, layout: str = "zigzag",
           dim: int = 1) -> torch.Tensor:
    """The global tensor, on every rank of `group`, from each rank's part `local` (all_gather).

    Every rank must pass a part of the same shape.  Not differentiable: the result has no
    autograd history (use it to check or save results, not inside a training step).
    """
    check_layout(layout)
    if local.shape[dim] % chunks_per_rank(layout) != 0:
        raise ValueError(f"local has odd length {local.shape[dim]} in dimension {dim}; a zigzag part holds "
                         "two equal chunks")
    local = local.detach().contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return unshard(parts, layout, dim)


# Packed variable-length batches: (total_tokens, ...) with cu_seqlens (B + 1,).  Every sequence is
# cut into world_size contiguous pieces and rank r holds piece r of each, packed in batch order
# (ring-flash-attn's varlen layout), so every rank's local cu_seqlens is the global one / world_size.

def _varlen_lengths(cu_seqlens, world_size: int, total: int, what: str) -> list:
    """The global sequence lengths, read on the host, each checked to split into world_size pieces."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"cu_seqlens must hold integers (int32, as flash_attn_varlen_func takes), got "
                        f"{cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must have shape (batch + 1,), got {tuple(cu_seqlens.shape)}")
    values = cu_seqlens.tolist()
    lengths = [end - start for start, end in zip(values, values[1:])]
    if values[0] != 0 or any(length < 0 for length in lengths):
        raise ValueError(f"cu_seqlens must start at 0 and be non-decreasing, got {values}")
    if values[-1] != total:
        raise ValueError(f"cu_seqlens ends at {values[-1]} but {what}; cu_seqlens must describe the global batch")
    uneven = [length for length in lengths if length % world_size != 0]
    if uneven:
        raise ValueError(f"cu_seqlens holds sequence lengths {uneven} that {world_size} ranks cannot split: every "
                         f"sequence length must be a multiple of world_size = {world_size} (pad the sequences)")
    return lengths


def _varlen_rows(lengths: list, rank: int, world_size: int) -> torch.Tensor:
    """The global rows of rank `rank`'s part, in local order."""
    pieces, start = [], 0
    for length in lengths:
        piece = length // world_size
        pieces.append(torch.arange(start + rank * piece, start + (rank + 1) * piece))
        start += length
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)


def varlen_shard(x: torch.Tensor, cu_seqlens: torch.Tensor, rank: int, world_size: int, dim: int = 0):
    """Rank `rank`'s part of a packed batch x (its tokens along `dim`, described by the global
    cu_seqlens), and the local cu_seqlens: (x_local, cu_seqlens // world_size).

    Each sequence's length must be a multiple of world_size (ValueError naming cu_seqlens
    otherwise).  The local max_seqlen is the global one // world_size.  Differentiable (an
    index_select); cu_seqlens is read on the host.
    """
    _check_rank(rank, world_size)
    lengths = _varlen_lengths(cu_seqlens, world_size, x.shape[dim],
                              f"x holds {x.shape[dim]} tokens in dimension {dim}")
    rows = _varlen_rows(lengths, rank, world_size).to(x.device)
    return x.index_select(dim, rows), torch.div(cu_seqlens, world_size, rounding_mode="floor")


def varlen_unshard(parts, cu_seqlens: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The global packed batch from every rank's part (a list in rank order): the inverse of
    `varlen_shard`; cu_seqlens is the global batch's."""
    world_size = len(parts)
    local_total = parts[0].shape[dim]
    lengths = _varlen_lengths(cu_seqlens, world_size, world_size * local_total,
                              f"the {world_size} parts hold {world_size} x {local_total} tokens in dimension {dim}")
    stacked = torch.cat(list(parts), dim=dim)
    # Where each global row sits in `stacked` (rank r's part starts at r * local_total).
    source = torch.empty(world_size * local_total, dtype=torch.int64)
    for rank in range(world_size):
        source[_varlen_rows(lengths, rank, world_size)] = torch.arange(rank * local_total, (rank + 1) * local_total)
    return stacked.index_select(dim, source.to(stacked.device))


def varlen_gather(local: torch.Tensor, cu_seqlens: torch.Tensor, group: Optional[dist.ProcessGroup] = None,
                  dim: int = 0) -> torch.Tensor:
    """The global packed batch, on every rank of `group`, from each rank's part `local` (all_gather);
    cu_seqlens is the global batch's (as given to `varlen_shard`).  Use dim=1 for softmax_lse
    (num_heads, local_total).  Not differentiable."""
    local = local.detach().contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return varlen_unshard(parts, cu_seqlens, dim)
