"""Which kernel calls one ring step makes over a packed variable-length batch.

Every sequence b of the global batch is cut into W contiguous pieces of L_b tokens, rank r holding
piece r; the local batch is packed by the local cu_seqlens, the same on every rank.  At a step,
sequence b's queries meet one rank's piece of its keys, and `block_plan.plan_step` (contiguous
layout, seqlen_local L_b) says which rectangle of the pair to compute and under which local band;
sequences of different lengths get the same answer except under a sliding window.  Sequences whose
calls share a band go into one varlen kernel call.  When that call takes every (non-empty)
sequence whole (full, causal diagonal: every step without a window) it is the plain call with the
local cu_seqlens.  Otherwise it is expressed with FlashAttention-3's seqused: sequence b's span
starts at its rectangle's first row and seqused[b] rows of it take part, so the rectangle is the
whole of what the kernel sees (causal and windows align to its bottom-right corner); sequences
outside the call get seqused 0, and an empty leading sequence lets the first span start past row 0.
Rows outside every rectangle come back with output 0 and lse +inf, which the merge ignores, and
keys outside them get gradient 0.
"""

import functools
from typing import NamedTuple, Optional

import torch

from flashtron.distributed.block_plan import plan_step, same_band


class PackedCall(NamedTuple):
    """One varlen kernel call of a step: ops.attention_forward / attention_backward's layout arguments."""
    window_left: int
    window_right: int
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    seqused_q: Optional[torch.Tensor]
    seqused_k: Optional[torch.Tensor]
    max_seqlen_q: int
    max_seqlen_k: int


@functools.lru_cache(maxsize=256)
def plan_packed_step(rank: int, key_rank: int, world_size: int, lengths: tuple, window_left: int,
                     window_right: int) -> tuple:
    """The step's calls on the host: ((window_left', window_right'), rectangles) per call, where
    rectangles is None when the call takes every sequence whole, else one (query_start, query_end,
    key_start, key_end) per sequence (local to the sequence), or None for a sequence not in the call."""
    planned = {}  # sequence -> its BlockCall, for the sequences the step computes anything of
    for b, length in enumerate(lengths):
        if length > 0:
            calls = plan_step(rank, key_rank, world_size, length, "contiguous", window_left, window_right)
            assert len(calls) <= 1, calls  # the contiguous layout: one rectangle per (query piece, key piece)
            if calls:
                planned[b] = calls[0]
    # Few calls: a sequence may join any band that is the same as its own on its rectangle (a one-token
    # diagonal accepts every band holding distance 0); greedily take the band that serves the most.
    accepts = {window: {b for b, call in planned.items() if same_band(call, *window)}
               for window in dict.fromkeys(call[4:] for call in planned.values())}
    by_window, unassigned = {}, set(planned)
    while unassigned:
        window = max(accepts, key=lambda candidate: len(accepts[candidate] & unassigned))
        by_window[window] = {b: tuple(planned[b][:4]) for b in sorted(accepts[window] & unassigned)}
        unassigned -= accepts[window]
    non_empty = sum(1 for length in lengths if length > 0)
    calls = []
    for window, rectangles in by_window.items():
        whole = len(rectangles) == non_empty and all(
            rectangle == (0, lengths[b], 0, lengths[b]) for b, rectangle in rectangles.items())
        calls.append((window, None if whole else tuple(rectangles.get(b) for b in range(len(lengths)))))
    return tuple(calls)


def _spans(cu_values, rectangles, side: int):
    """(cu_seqlens, seqused) placing each sequence's rectangle on one side (0: queries, 2: keys),
    behind an empty leading sequence."""
    starts, used = [0], [0]
    for b, rectangle in enumerate(rectangles):
        first, end = (0, 0) if rectangle is None else rectangle[side:side + 2]
        starts.append(cu_values[b] + first)
        used.append(end - first)
    return starts + [cu_values[-1]], used


def packed_calls(rank: int, key_rank: int, world_size: int, cu_values: list, cu_seqlens: torch.Tensor,
                 window_left: int, window_right: int) -> tuple:
    """The step's `PackedCall`s, given the local cu_seqlens as host values and as the device tensor."""
    lengths = tuple(end - start for start, end in zip(cu_values, cu_values[1:]))
    calls = []
    for (left, right), rectangles in plan_packed_step(rank, key_rank, world_size, lengths, window_left,
                                                      window_right):
        if rectangles is None:
            longest = max(lengths)
            calls.append(PackedCall(left, right, cu_seqlens, cu_seqlens, None, None, longest, longest))
            continue
        layout = []
        for side in (0, 2):
            starts, used = _spans(cu_values, rectangles, side)
            layout.append((torch.tensor(starts, dtype=torch.int32).to(cu_seqlens.device),
                           torch.tensor(used, dtype=torch.int32).to(cu_seqlens.device), max(used)))
        (cu_q, used_q, longest_q), (cu_k, used_k, longest_k) = layout
        calls.append(PackedCall(left, right, cu_q, cu_k, used_q, used_k, longest_q, longest_k))
    return tuple(calls)
