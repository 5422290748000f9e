"""Where each rank's part of the global sequence lies, and how to cut a tensor into parts and back.

Two layouts of a global sequence of length S over W ranks, each rank holding S / W positions:
"contiguous" gives rank r the positions [r S/W, (r + 1) S/W); "zigzag" cuts the sequence into 2W
chunks of S / 2W and gives rank r chunks r and 2W - 1 - r, concatenated in that order, so that
under a causal mask every rank has the same amount of work (ring-flash-attn's zigzag).
A rank's part is described by `Segment`s: runs of consecutive global positions, in the order
they sit in the rank's local tensor.  `shard` is differentiable (slices and a concatenation);
`gather` collects the parts with all_gather and is not.
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
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) = [0, {world_size}), got {rank}")
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
