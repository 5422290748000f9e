"""The process group as a ring: batched point-to-point shifts, and the check that ranks agree.

Every rank sends to rank + 1 and receives from rank - 1 (modulo the group size) in one
`batch_isend_irecv`, which NCCL runs on its own stream and gloo on its own threads, so a shift
started before a block's computation overlaps with it; `wait` makes the caller's stream (or
thread) wait for it.  Received tensors are fresh buffers, so a tensor being sent is never
overwritten while in flight.
"""

from typing import Optional

import torch
import torch.distributed as dist

# Tags keep the key/value and the gradient streams apart on backends that match by tag (gloo).
TAG_KEY_VALUE = 0
TAG_GRADIENT = 1

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


def resolve_group(group: Optional[dist.ProcessGroup], error: Optional[Exception] = None):
    """(group, rank in it, its size); group=None is the default group.  error: what this rank's own checks
    raised, if anything; without an initialised group there is nobody to settle it with, so it is raised here."""
    if not (dist.is_available() and dist.is_initialized()):
        if error is not None:
            raise error
        raise RuntimeError("ring attention needs torch.distributed initialised: call "
                           "torch.distributed.init_process_group first (group=None uses the default group)")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the process group passed as group")
    return group, rank, dist.get_world_size(group)


class Ring:
    """This rank's neighbours in `group`, by global rank (what P2POp takes)."""

    def __init__(self, group: Optional[dist.ProcessGroup], rank: int, world_size: int):
        self.group, self.rank, self.world_size = group, rank, world_size
        ring_group = group if group is not None else dist.group.WORLD
        self.next_peer = dist.get_global_rank(ring_group, (rank + 1) % world_size)
        self.previous_peer = dist.get_global_rank(ring_group, (rank - 1) % world_size)

    def shift(self, tensor: torch.Tensor, tag: int):
        """Start sending `tensor` to the next rank and receiving the previous rank's into a new
        tensor of the same shape; returns (that tensor, the pending requests for `wait`)."""
        if self.world_size == 1:
            return tensor, []
        received = torch.empty_like(tensor)
        requests = dist.batch_isend_irecv([
            dist.P2POp(dist.isend, tensor, self.next_peer, self.group, tag),
            dist.P2POp(dist.irecv, received, self.previous_peer, self.group, tag),
        ])
        return received, requests

    @staticmethod
    def wait(requests) -> None:
        for request in requests:
            request.wait()


def _collective_device(group, tensor) -> torch.device:
    # gloo (alone or as the CPU half of "cpu:gloo,cuda:nccl") reduces CPU tensors.  `tensor` may be an argument
    # that failed its checks (not a tensor): NCCL then takes the current CUDA device.
    if "gloo" in str(dist.get_backend(group)):
        return torch.device("cpu")
    return tensor.device if isinstance(tensor, torch.Tensor) else torch.device("cuda", torch.cuda.current_device())


def _gather_rows(values, group, world_size: int, like: torch.Tensor) -> list:
    """Every rank's `values` (ints: a list or a 1-D tensor, of the same length on every rank), in rank
    order, read on the host (one synchronisation)."""
    device = _collective_device(group, like)
    if isinstance(values, torch.Tensor):
        mine = values.to(device=device, dtype=torch.int64)
    else:
        mine = torch.tensor(values, dtype=torch.int64, device=device)
    table = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(table, mine, group=group)
    return [tuple(row.tolist()) for row in table]


_REFUSED = -1  # the first value of a rank's row when its own checks refused its arguments


def _settle(rows: list, error: Optional[Exception]) -> None:
    """Raise on every rank if any rank's checks refused its arguments: that rank its own error, the others a
    ValueError naming it, so that no rank goes on into the ring's exchanges waiting for one that left."""
    refused = [rank for rank, row in enumerate(rows) if row[0] == _REFUSED]
    if error is not None:
        raise error
    if refused:
        raise ValueError(f"rank(s) {refused} of the group refused their arguments (each raises its own error "
                         "there); ring attention runs only when every rank's call is valid")


def check_same_shapes(q: torch.Tensor, k: torch.Tensor, group, world_size: int,
                      error: Optional[Exception] = None) -> None:
    """Raise ValueError on every rank unless all ranks hold q and k of the same shapes and dtype.  error: what
    this rank's own checks raised (None: they passed), which every rank learns of here (`_settle`).

    One small all_gather: ranks that disagree would otherwise exchange blocks of different sizes
    (a hang under NCCL).  Every rank sees the same gathered table, so all raise together.
    """
    if world_size == 1:
        if error is not None:
            raise error
        return
    if error is None:
        batch, seqlen, num_heads, head_dim = q.shape
        values = [seqlen, batch, num_heads, k.shape[2], head_dim, _DTYPE_CODES[q.dtype]]
    else:
        values = [_REFUSED] * 6
    rows = _gather_rows(values, group, world_size, q)
    _settle(rows, error)
    lengths = [row[0] for row in rows]
    if any(length != lengths[0] for length in lengths):
        raise ValueError(f"the local sequence lengths differ across ranks: {lengths}; every rank must hold "
                         "an equal part of the global sequence")
    if any(row != rows[0] for row in rows):
        raise ValueError("ranks pass q and k of different shapes or dtypes: (batch, heads, heads_k, head_dim, "
                         f"dtype code) per rank = {[row[1:] for row in rows]}; they must agree")


def check_same_packed_batch(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, group,
                            world_size: int, error: Optional[Exception] = None) -> list:
    """The packed form of `check_same_shapes`: q (total, H, D), k (total, Hk, D), the local cu_seqlens
    (B + 1,) and max_seqlen must agree on every rank (ValueError on every rank otherwise); error as there.

    Returns cu_seqlens' values as a list of ints, read on the host: the one synchronisation of a
    call, which the check needs anyway.  Two all_gathers (the second once the batch sizes agree).
    """
    if world_size == 1:
        if error is not None:
            raise error
        return cu_seqlens.tolist()
    if error is None:
        total, num_heads, head_dim = q.shape
        values = [total, cu_seqlens.shape[0], num_heads, k.shape[1], head_dim, _DTYPE_CODES[q.dtype], max_seqlen]
    else:
        values = [_REFUSED] * 7
    rows = _gather_rows(values, group, world_size, q)
    _settle(rows, error)
    totals = [row[0] for row in rows]
    if any(count != totals[0] for count in totals):
        raise ValueError(f"the local token counts differ across ranks: {totals}; every rank must hold an equal "
                         "part (1 / world_size) of every sequence of the packed batch")
    if any(row != rows[0] for row in rows):
        raise ValueError("ranks pass q, k and cu_seqlens of different shapes or dtypes, or different max_seqlen: "
                         "(len(cu_seqlens), heads, heads_k, head_dim, dtype code, max_seqlen) per rank = "
                         f"{[row[1:] for row in rows]}; they must agree")
    tables = _gather_rows(cu_seqlens, group, world_size, q)
    if any(table != tables[0] for table in tables):
        raise ValueError(f"cu_seqlens differs across ranks: {[list(table) for table in tables]}; every rank must "
                         "pass the same local cu_seqlens (each sequence's global length / world_size)")
    return list(tables[0])
