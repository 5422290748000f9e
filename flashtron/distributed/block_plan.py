"""Which rectangles of one ring step to compute, and with which mask: the ring's block_info.

At a step, a rank holds its queries and one rank's keys; each is a concatenation of `Segment`s of
the global sequence.  Globally, query i sees key j iff -window_left <= j - i <= window_right (-1:
unbounded; causal is window_right = 0; the global sequence is square, so no alignment offset).
`ops.attention_forward` applies the same band in the coordinates of its call, bottom-right
aligned: local query i' sees local key j' iff -left' <= j' - i' - (Sk' - Sq') <= right'.  A
`BlockCall` is a rectangle of the local tensors with a (left', right') under which that local
rule equals the global one everywhere in the rectangle; the calls of a step cover every visible
(query, key) pair exactly once and skip what nobody sees.  One call when one rectangle can carry
the step (always for the contiguous layout: full, diagonal or nothing; for zigzag under a causal
mask the standard split: the diagonal step, every query against the first half of the keys, or
the second half of the queries against every key); else one call per pair of segments.
"""

import functools
import math
from typing import NamedTuple

from flashtron.distributed.layout import Segment, local_segments


class BlockCall(NamedTuple):
    """Local query rows [query_start, query_end) against local keys [key_start, key_end)."""
    query_start: int
    query_end: int
    key_start: int
    key_end: int
    window_left: int
    window_right: int


def _band(window_left: int, window_right: int, shift: int = 0):
    """The visible distances j - i as a closed interval, moved by -shift; +-inf where unbounded."""
    low = -math.inf if window_left < 0 else -window_left - shift
    high = math.inf if window_right < 0 else window_right - shift
    return low, high


def _clip(band, low: int, high: int):
    clipped = (max(band[0], low), min(band[1], high))
    return clipped if clipped[0] <= clipped[1] else None


def same_band(call: "BlockCall", window_left: int, window_right: int) -> bool:
    """Whether (window_left, window_right) selects the same pairs as the call's own window in its
    rectangle (bottom-right aligned: the distances j' - i' - (Sk' - Sq') there run over [1 - Sk', Sq' - 1])."""
    rows, keys = call.query_end - call.query_start, call.key_end - call.key_start
    low, high = 1 - keys, rows - 1
    return (_clip(_band(window_left, window_right), low, high)
            == _clip(_band(call.window_left, call.window_right), low, high))


def _visible_rectangle(query: Segment, key: Segment, window_left: int, window_right: int):
    """Local (query rows, key rows) of the pair that see or are seen by anything; None if nothing."""
    row_lo, row_hi = query.start, query.start + query.length
    key_lo, key_hi = key.start, key.start + key.length
    if window_right >= 0:  # row i sees keys up to i + right; key j is seen from row j - right on
        row_lo = max(row_lo, key.start - window_right)
        key_hi = min(key_hi, query.start + query.length + window_right)
    if window_left >= 0:
        row_hi = min(row_hi, key.start + key.length + window_left)
        key_lo = max(key_lo, query.start - window_left)
    if row_lo >= row_hi or key_lo >= key_hi:
        return None
    to_query, to_key = query.offset - query.start, key.offset - key.start
    return (row_lo + to_query, row_hi + to_query), (key_lo + to_key, key_hi + to_key)


def _local_window(rows, keys, pairs, window_left: int, window_right: int):
    """A (left', right') for one call over local `rows` x `keys` that equals the global band on
    every pair of segments (query, key) meeting the rectangle, or None if there is none."""
    (row_start, row_end), (key_start, key_end) = rows, keys
    alignment = (key_end - key_start) - (row_end - row_start)
    pieces = []
    for query, key in pairs:
        lo_row, hi_row = max(row_start, query.offset), min(row_end, query.offset + query.length)
        lo_key, hi_key = max(key_start, key.offset), min(key_end, key.offset + key.length)
        if lo_row >= hi_row or lo_key >= hi_key:
            continue
        # Call-local distance x' = j' - i' - alignment; global distance = x' + shift on this piece.
        shift = alignment + (key.start - key.offset) - (query.start - query.offset) + key_start - row_start
        low = lo_key - key_start - (hi_row - 1 - row_start) - alignment
        high = hi_key - 1 - key_start - (lo_row - row_start) - alignment
        pieces.append((shift, low, high))
    # Unbounded sides first: a side that binds nowhere in the rectangle costs the kernel no masking.
    lefts, rights = [-1], [-1]
    for shift, _, _ in pieces:
        if window_left >= 0 and window_left + shift >= 0:
            lefts.append(window_left + shift)
        if window_right >= 0 and window_right - shift >= 0:
            rights.append(window_right - shift)
    for left in dict.fromkeys(lefts):
        for right in dict.fromkeys(rights):
            if all(_clip(_band(left, right), low, high)
                   == _clip(_band(window_left, window_right, shift), low, high) for shift, low, high in pieces):
                return left, right
    return None


@functools.lru_cache(maxsize=4096)
def plan_step(rank: int, key_rank: int, world_size: int, seqlen_local: int, layout: str,
              window_left: int, window_right: int) -> tuple:
    """The calls for `rank`'s queries against `key_rank`'s keys, as a tuple of `BlockCall`s."""
    queries = local_segments(rank, world_size, seqlen_local, layout)
    keys = local_segments(key_rank, world_size, seqlen_local, layout)
    visible = []
    for query in queries:
        for key in keys:
            rectangle = _visible_rectangle(query, key, window_left, window_right)
            if rectangle is not None:
                visible.append(((query, key), rectangle))
    if not visible:
        return ()
    rows = (min(r[0][0] for _, r in visible), max(r[0][1] for _, r in visible))
    cols = (min(r[1][0] for _, r in visible), max(r[1][1] for _, r in visible))
    pairs = [(query, key) for query in queries for key in keys]
    window = _local_window(rows, cols, pairs, window_left, window_right)
    if window is not None:
        return (BlockCall(*rows, *cols, *window),)
    calls = []
    for pair, (rows, cols) in visible:
        # A single pair's trimmed rectangle always has a local band: its last row sees its last key.
        window = _local_window(rows, cols, [pair], window_left, window_right)
        assert window is not None, (pair, rows, cols, window_left, window_right)
        calls.append(BlockCall(*rows, *cols, *window))
    return tuple(calls)
