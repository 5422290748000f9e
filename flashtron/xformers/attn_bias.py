"""xFormers' attention biases: masks described by a few integers instead of a tensor.

Each class keeps xFormers' name, constructor and field names (`q_seqinfo`, `k_seqinfo`,
`seqstart`, `seqstart_py`, `seqlen`, `max_seqlen`, `_window_size`, `block_tables`, ...), so code
written against `xformers.ops.fmha.attn_bias` runs unchanged.  Every bias states its rule once, as
a `_Band` (which keys a query sees inside its block); `materialize()` and the kernel mapping in
`flashtron.xformers.dispatch` both read that one rule.

Alignment, the one subtle point.  xFormers' plain causal masks are TOP-LEFT aligned: query i sees
key j iff j <= i, whatever the lengths (`LowerTriangularMask`, `BlockDiagonalCausalMask` and its
local form).  The masks named `...FromBottomRight...` and `...WithOffset...` are BOTTOM-RIGHT
aligned, flash-attn's convention: query i sees key j iff j <= i + num_keys - num_queries, so the last
query sees the last key.  The two agree when num_queries == num_keys.  A causal local window of
`window_size` keeps the `window_size` keys ending at the diagonal (flash-attn window_size=(w - 1, 0));
`LocalAttentionFromBottomRightMask(window_left, window_right)` keeps window_left keys before the
bottom-right diagonal and window_right after it (flash-attn window_size=(window_left, window_right)).
"""

import math
import operator
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch

Device = Union[str, torch.device]


@dataclass(frozen=True)
class _Band:
    """Query i sees key j iff -left <= j - i - diagonal <= right (None: unbounded on that side).

    diagonal is 0 when aligned to the top-left corner, num_keys - num_queries when aligned to the
    bottom-right corner; lengths are those of one block (of the used keys, for padded keys).
    """

    from_bottom_right: bool
    left: Optional[int]
    right: Optional[int]

    def diagonal(self, num_queries: int, num_keys: int) -> int:
        return num_keys - num_queries if self.from_bottom_right else 0

    def keep(self, num_queries: int, num_keys: int, device: Device) -> torch.Tensor:
        rows = torch.arange(num_queries, device=device)[:, None]
        keys = torch.arange(num_keys, device=device)[None, :]
        distance = keys - rows - self.diagonal(num_queries, num_keys)
        keep = torch.ones(num_queries, num_keys, dtype=torch.bool, device=device)
        if self.left is not None:
            keep &= distance >= -self.left
        if self.right is not None:
            keep &= distance <= self.right
        return keep


_FULL = _Band(from_bottom_right=True, left=None, right=None)
_CAUSAL_TOP_LEFT = _Band(from_bottom_right=False, left=None, right=0)
_CAUSAL_BOTTOM_RIGHT = _Band(from_bottom_right=True, left=None, right=0)


def _additive(keep: torch.Tensor, shape: Sequence[int], dtype: torch.dtype, device: Device) -> torch.Tensor:
    """0 where keep, -inf elsewhere, broadcast from (Mq, Mk) to `shape` and made contiguous."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill_(~keep.to(device), -math.inf)
    return bias.expand(tuple(shape)).contiguous()


def _check_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"materialize needs a shape [..., num_queries, num_keys], got {shape}")
    return shape


def _default_device(device: Optional[Device]) -> torch.device:
    # As xFormers: sequence tensors go to the GPU when there is one, so the kernels need no copy.
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _int32_tensor(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int32, device=device)


class AttentionBias:
    """A bias added to q k^T * scale before the softmax, described without a dense tensor."""

    HOLDS_DENSE_TENSOR = False
    _band: ClassVar[_Band] = _FULL

    def materialize(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
                    device: Device = "cpu") -> torch.Tensor:
        """The additive bias (0 where a query sees a key, -inf elsewhere) of `shape` [..., Mq, Mk].

        For tests and debugging: it builds the whole matrix."""
        raise NotImplementedError(f"{type(self).__name__} does not define materialize()")

    def to(self, device: Device) -> "AttentionBias":
        return self


# ----------------------------------------------------------------------------------- dense masks


class LowerTriangularMask(AttentionBias):
    """Causal mask aligned to the top-left corner: query i sees key j iff j <= i.

    With more keys than queries, the keys past the last query's index are seen by no one; see
    `LowerTriangularFromBottomRightMask` for the flash-attn alignment.  `device` is accepted as in
    xFormers (where the mask is a tensor subclass) and not needed: the mask holds no tensor."""

    _band = _CAUSAL_TOP_LEFT

    def __init__(self, *, device: Device = "cpu") -> None:
        pass

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        shape = _check_shape(shape)
        return _additive(self._band.keep(shape[-2], shape[-1], device), shape, dtype, device)

    def add_bias(self, bias: torch.Tensor) -> "LowerTriangularMaskWithTensorBias":
        """This causal mask plus an additive tensor `bias` (broadcastable to [B, H, Mq, Mk])."""
        return LowerTriangularMaskWithTensorBias(bias)


class LowerTriangularMaskWithTensorBias(LowerTriangularMask):
    """`LowerTriangularMask` (top-left) plus a dense additive tensor, differentiable."""

    HOLDS_DENSE_TENSOR = True

    def __init__(self, bias: torch.Tensor) -> None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor, got {type(bias).__name__}")
        self._subtensor = bias

    def to(self, *args, **kwargs) -> "LowerTriangularMaskWithTensorBias":
        """The mask with its bias moved or converted as `torch.Tensor.to(*args, **kwargs)` would (differentiably)."""
        return LowerTriangularMaskWithTensorBias(self._subtensor.to(*args, **kwargs))

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        mask = super().materialize(shape, dtype=dtype, device=device)
        return mask + self._subtensor.to(device=device, dtype=dtype)


class LowerTriangularFromBottomRightMask(AttentionBias):
    """Causal mask aligned to the bottom-right corner (flash-attn's causal=True):
    query i sees key j iff j <= i + Mk - Mq.  With Mq > Mk the first Mq - Mk queries see nothing."""

    _band = _CAUSAL_BOTTOM_RIGHT

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        shape = _check_shape(shape)
        return _additive(self._band.keep(shape[-2], shape[-1], device), shape, dtype, device)

    def make_local_attention(self, window_size: int) -> "LowerTriangularFromBottomRightLocalAttentionMask":
        return LowerTriangularFromBottomRightLocalAttentionMask(window_size)


def _integer(value) -> Optional[int]:
    """value as an int where it is an integer (Python's, numpy's, a 0-d integer tensor; not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_window_size(window_size) -> int:
    value = _integer(window_size)
    if value is None or value <= 0:
        raise ValueError(f"window_size must be a positive int (the keys a query sees, its own "
                         f"diagonal included), got {window_size!r}")
    return value


def _check_window_sides(bias) -> None:
    for name in ("window_left", "window_right"):
        value = _integer(getattr(bias, name))
        if value is None or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {getattr(bias, name)!r}")
        setattr(bias, name, value)


@dataclass
class LowerTriangularFromBottomRightLocalAttentionMask(LowerTriangularFromBottomRightMask):
    """Bottom-right causal mask that also drops keys `_window_size` or more before the diagonal:
    query i sees key j iff i + Mk - Mq - (window_size - 1) <= j <= i + Mk - Mq."""

    _window_size: int

    def __post_init__(self) -> None:
        self._window_size = _check_window_size(self._window_size)

    @property
    def _band(self) -> _Band:
        return _Band(from_bottom_right=True, left=self._window_size - 1, right=0)


@dataclass
class LocalAttentionFromBottomRightMask(AttentionBias):
    """Band around the bottom-right diagonal: query i sees key j iff
    i + Mk - Mq - window_left <= j <= i + Mk - Mq + window_right (window_left + 1 + window_right keys)."""

    window_left: int
    window_right: int

    def __post_init__(self) -> None:
        _check_window_sides(self)

    @property
    def _band(self) -> _Band:
        return _Band(from_bottom_right=True, left=self.window_left, right=self.window_right)

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        shape = _check_shape(shape)
        return _additive(self._band.keep(shape[-2], shape[-1], device), shape, dtype, device)


# -------------------------------------------------------------------------- sequence partitions


@dataclass(eq=False)
class _SeqLenInfo:
    """A dimension cut into consecutive blocks: block b is [seqstart_py[b], seqstart_py[b + 1]).

    seqstart holds the same offsets as an int32 tensor (on the kernels' device)."""

    seqstart: torch.Tensor
    max_seqlen: int
    min_seqlen: int
    seqstart_py: List[int]

    @classmethod
    def from_seqlens(cls, seqlens: Iterable[int], *, device: Optional[Device] = None) -> "_SeqLenInfo":
        if isinstance(seqlens, torch.Tensor):
            seqlens = seqlens.tolist()
        seqlens = [int(s) for s in seqlens]
        if any(s < 0 for s in seqlens):
            raise ValueError(f"sequence lengths must be >= 0, got {seqlens}")
        seqstart_py = [0]
        for length in seqlens:
            seqstart_py.append(seqstart_py[-1] + length)
        return cls(seqstart=_int32_tensor(seqstart_py, _default_device(device)),
                   max_seqlen=max(seqlens, default=0), min_seqlen=min(seqlens, default=0),
                   seqstart_py=seqstart_py)

    def intervals(self) -> Iterable[Tuple[int, int]]:
        """(start, end) of each block's used positions."""
        return zip(self.seqstart_py[:-1], self.seqstart_py[1:])

    def seqlens_py(self) -> List[int]:
        return [end - start for start, end in self.intervals()]

    def to(self, device: Device) -> "_SeqLenInfo":
        if self.seqstart.device == torch.device(device):
            return self
        return type(self)(**{**self.__dict__, "seqstart": self.seqstart.to(device)})

    def split(self, x: torch.Tensor, batch_sizes: Optional[Sequence[int]] = None) -> List[torch.Tensor]:
        """Cut x [1, total, ...] back into the tensors it was concatenated from.

        batch_sizes (from `from_tensor_list`) regroups consecutive blocks into [bs, len, ...]."""
        if x.shape[0] != 1 or x.shape[1] != self.seqstart_py[-1]:
            raise ValueError(f"expected a tensor [1, {self.seqstart_py[-1]}, ...] (batch 1, the blocks' "
                             f"total length), got shape {tuple(x.shape)}")
        if batch_sizes is None:
            batch_sizes = [1] * (len(self.seqstart_py) - 1)
        pieces, block = [], 0
        for batch_size in batch_sizes:
            start, end = self.seqstart_py[block], self.seqstart_py[block + batch_size]
            pieces.append(x[:, start:end].reshape(batch_size, -1, *x.shape[2:]))
            block += batch_size
        return pieces


@dataclass(eq=False)
class _PaddedSeqLenInfo(_SeqLenInfo):
    """Blocks of a fixed stride `padding`, each using only its first seqlen[b] positions.

    seqstart_py = [0, padding, 2 * padding, ...]; seqlen / seqlen_py hold the used lengths."""

    seqlen: torch.Tensor
    seqlen_py: List[int]
    padding: int

    @classmethod
    def from_seqlens(cls, seqlens, *, device=None):
        raise RuntimeError("use _SeqLenInfo.from_seqlens, or _PaddedSeqLenInfo.from_seqlens_padded")

    @classmethod
    def from_seqlens_padded(cls, seqlens: Sequence[int], padding: int, *,
                            device: Optional[Device] = None) -> "_PaddedSeqLenInfo":
        if isinstance(seqlens, torch.Tensor):
            seqlens = seqlens.tolist()
        seqlens = [int(s) for s in seqlens]
        if any(s < 0 or s > padding for s in seqlens):
            raise ValueError(f"every key length must be in [0, padding={padding}], got {seqlens}")
        device = _default_device(device)
        seqstart_py = list(range(0, len(seqlens) * padding + 1, padding)) if padding > 0 else [0] * (len(seqlens) + 1)
        return cls(seqstart=_int32_tensor(seqstart_py, device), max_seqlen=max(seqlens, default=0),
                   min_seqlen=min(seqlens, default=0), seqstart_py=seqstart_py,
                   seqlen=_int32_tensor(seqlens, device), seqlen_py=seqlens, padding=padding)

    def intervals(self) -> Iterable[Tuple[int, int]]:
        return ((start, start + length) for start, length in zip(self.seqstart_py, self.seqlen_py))

    def to(self, device: Device) -> "_PaddedSeqLenInfo":
        if self.seqlen.device == torch.device(device):
            return self
        return type(self)(**{**self.__dict__, "seqstart": self.seqstart.to(device),
                             "seqlen": self.seqlen.to(device)})

    def split(self, x, batch_sizes=None):
        raise NotImplementedError("padded blocks cannot be split back into a list")


def _materialize_blocks(q_intervals, k_intervals, band: _Band, shape, dtype, device) -> torch.Tensor:
    keep = torch.zeros(shape[-2], shape[-1], dtype=torch.bool, device=device)
    for (q_start, q_end), (k_start, k_end) in zip(q_intervals, k_intervals):
        keep[q_start:q_end, k_start:k_end] = band.keep(q_end - q_start, k_end - k_start, device)
    return _additive(keep, shape, dtype, device)


def _check_totals(shape, num_queries: int, num_keys: int, what: str) -> Tuple[int, ...]:
    shape = _check_shape(shape)
    if shape[-2] != num_queries or shape[-1] != num_keys:
        raise ValueError(f"{what} spans {num_queries} queries and {num_keys} keys; "
                         f"materialize needs a shape [..., {num_queries}, {num_keys}], got {shape}")
    return shape


# ------------------------------------------------------------------------- block-diagonal masks


@dataclass(eq=False)
class BlockDiagonalMask(AttentionBias):
    """Sequences packed along one dimension (batch 1): queries of block b see only keys of block b.

    Build it with `from_seqlens` or `from_tensor_list`; `split` undoes the packing."""

    q_seqinfo: _SeqLenInfo
    k_seqinfo: _SeqLenInfo
    _batch_sizes: Optional[Sequence[int]] = None

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        shape = _check_totals(shape, self.q_seqinfo.seqstart_py[-1], self.k_seqinfo.seqstart_py[-1],
                              type(self).__name__)
        return _materialize_blocks(self.q_seqinfo.intervals(), self.k_seqinfo.intervals(), self._band,
                                   shape, dtype, device)

    def to(self, device: Device) -> "BlockDiagonalMask":
        return type(self)(**{**self.__dict__, "q_seqinfo": self.q_seqinfo.to(device),
                             "k_seqinfo": self.k_seqinfo.to(device)})

    @classmethod
    def from_seqlens(cls, q_seqlen: Sequence[int], kv_seqlen: Optional[Sequence[int]] = None, *,
                     device: Optional[Device] = None) -> "BlockDiagonalMask":
        """Blocks of q_seqlen[b] queries and kv_seqlen[b] keys (kv_seqlen defaults to q_seqlen)."""
        if kv_seqlen is not None and len(kv_seqlen) != len(q_seqlen):
            raise ValueError(f"q_seqlen and kv_seqlen must have one length per sequence, got "
                             f"{len(q_seqlen)} and {len(kv_seqlen)}")
        q_seqinfo = _SeqLenInfo.from_seqlens(q_seqlen, device=device)
        same = kv_seqlen is None or list(kv_seqlen) == list(q_seqlen)
        k_seqinfo = q_seqinfo if same else _SeqLenInfo.from_seqlens(kv_seqlen, device=device)
        return cls(q_seqinfo=q_seqinfo, k_seqinfo=k_seqinfo)

    @classmethod
    def from_tensor_list(cls, tensors: Sequence[torch.Tensor]) -> Tuple["BlockDiagonalMask", torch.Tensor]:
        """Pack tensors [B_i, M_i, ...] into one [1, sum_i B_i * M_i, ...] and its mask."""
        seqlens = [x.shape[1] for x in tensors for _ in range(x.shape[0])]
        mask = cls.from_seqlens(seqlens, device=tensors[0].device if len(tensors) else None)
        mask._batch_sizes = [x.shape[0] for x in tensors]
        return mask, torch.cat([x.reshape(1, -1, *x.shape[2:]) for x in tensors], dim=1)

    @classmethod
    def from_tensor_lists_qkv(cls, tensors_q: Sequence[torch.Tensor], tensors_k: Sequence[torch.Tensor],
                              tensors_v: Optional[Sequence[torch.Tensor]] = None):
        """Pack query, key (and value) lists at once; queries and keys may differ in length."""
        if len(tensors_q) != len(tensors_k) or (tensors_v is not None and len(tensors_v) != len(tensors_q)):
            raise ValueError("tensors_q, tensors_k and tensors_v must have the same number of tensors")
        q_seqlens, kv_seqlens = [], []
        for q, k in zip(tensors_q, tensors_k):
            if q.shape[0] != k.shape[0]:
                raise ValueError(f"each query tensor and its key tensor must share a batch size, got "
                                 f"{tuple(q.shape)} and {tuple(k.shape)}")
            q_seqlens += [q.shape[1]] * q.shape[0]
            kv_seqlens += [k.shape[1]] * k.shape[0]
        mask = cls.from_seqlens(q_seqlens, kv_seqlens, device=tensors_q[0].device if len(tensors_q) else None)
        mask._batch_sizes = [q.shape[0] for q in tensors_q]
        pack = lambda ts: torch.cat([x.reshape(1, -1, *x.shape[2:]) for x in ts], dim=1)
        return mask, pack(tensors_q), pack(tensors_k), None if tensors_v is None else pack(tensors_v)

    def split_queries(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return self.q_seqinfo.split(tensor, self._batch_sizes)

    def split_kv(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return self.k_seqinfo.split(tensor, self._batch_sizes)

    def split(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        """The inverse of `from_tensor_list` (queries and keys must share their blocks)."""
        if self.q_seqinfo.seqstart_py != self.k_seqinfo.seqstart_py:
            raise ValueError("split needs queries and keys cut into the same blocks; use split_queries or split_kv")
        return self.q_seqinfo.split(tensor, self._batch_sizes)

    def _derived(self, cls, **fields):
        return cls(q_seqinfo=self.q_seqinfo, k_seqinfo=self.k_seqinfo, _batch_sizes=self._batch_sizes, **fields)

    def make_causal(self) -> "BlockDiagonalCausalMask":
        """Each block causal, aligned to its top-left corner."""
        return self._derived(BlockDiagonalCausalMask)

    def make_causal_from_bottomright(self) -> "BlockDiagonalCausalFromBottomRightMask":
        """Each block causal, aligned to its bottom-right corner (keys before the queries are a prefix)."""
        return self._derived(BlockDiagonalCausalFromBottomRightMask)

    def make_local_attention(self, window_size: int) -> "BlockDiagonalCausalLocalAttentionMask":
        return self._derived(BlockDiagonalCausalLocalAttentionMask, _window_size=window_size)

    def make_local_attention_from_bottomright(
            self, window_size: int) -> "BlockDiagonalCausalLocalAttentionFromBottomRightMask":
        return self._derived(BlockDiagonalCausalLocalAttentionFromBottomRightMask, _window_size=window_size)


@dataclass(eq=False)
class BlockDiagonalCausalMask(BlockDiagonalMask):
    """Block-diagonal, each block causal from its top-left corner: the i-th query of a block sees
    the keys 0..i of that block."""

    _band = _CAUSAL_TOP_LEFT


@dataclass(eq=False)
class BlockDiagonalCausalFromBottomRightMask(BlockDiagonalMask):
    """Block-diagonal, each block causal from its bottom-right corner (flash-attn varlen causal).
    Every block must have at least as many keys as queries."""

    _band = _CAUSAL_BOTTOM_RIGHT

    def __post_init__(self) -> None:
        for block, ((q_start, q_end), (k_start, k_end)) in enumerate(
                zip(self.q_seqinfo.intervals(), self.k_seqinfo.intervals())):
            if k_end - k_start < q_end - q_start:
                raise ValueError(f"block {block} has {k_end - k_start} keys and {q_end - q_start} queries; "
                                 f"{type(self).__name__} needs num_keys >= num_queries in every block")


@dataclass(eq=False)
class BlockDiagonalCausalLocalAttentionMask(BlockDiagonalCausalMask):
    """Top-left causal blocks with a window: the i-th query of a block sees keys i - window_size + 1 .. i."""

    _window_size: int = 0

    def __post_init__(self) -> None:
        self._window_size = _check_window_size(self._window_size)
        for num_queries, num_keys in zip(self.q_seqinfo.seqlens_py(), self.k_seqinfo.seqlens_py()):
            if num_queries - self._window_size >= num_keys:
                # As xFormers: the last queries of such a block would see no key at all.
                raise RuntimeError(f"a block of {num_queries} queries and {num_keys} keys leaves queries "
                                   f"with no key in a window of {self._window_size}")

    @property
    def _band(self) -> _Band:
        return _Band(from_bottom_right=False, left=self._window_size - 1, right=0)


@dataclass(eq=False)
class BlockDiagonalCausalLocalAttentionFromBottomRightMask(BlockDiagonalCausalFromBottomRightMask):
    """Bottom-right causal blocks with a window of `_window_size` keys ending at the diagonal."""

    _window_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._window_size = _check_window_size(self._window_size)

    @property
    def _band(self) -> _Band:
        return _Band(from_bottom_right=True, left=self._window_size - 1, right=0)


@dataclass(eq=False)
class BlockDiagonalPaddedKeysMask(AttentionBias):
    """Packed queries (as `BlockDiagonalMask`) against keys stored with a fixed stride per sequence:
    block b's keys start at b * padding and only the first kv_seqlen[b] are used."""

    q_seqinfo: _SeqLenInfo
    k_seqinfo: _PaddedSeqLenInfo

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        shape = _check_totals(shape, self.q_seqinfo.seqstart_py[-1], self.k_seqinfo.seqstart_py[-1],
                              type(self).__name__)
        return _materialize_blocks(self.q_seqinfo.intervals(), self.k_seqinfo.intervals(), self._band,
                                   shape, dtype, device)

    def to(self, device: Device) -> "BlockDiagonalPaddedKeysMask":
        return type(self)(**{**self.__dict__, "q_seqinfo": self.q_seqinfo.to(device),
                             "k_seqinfo": self.k_seqinfo.to(device)})

    @classmethod
    def from_seqlens(cls, q_seqlen: Sequence[int], kv_padding: int, kv_seqlen: Sequence[int],
                     causal_diagonal: Any = None, *, device: Optional[Device] = None):
        """q_seqlen[b] packed queries; keys in slots of kv_padding, kv_seqlen[b] of them used.
        causal_diagonal is accepted for compatibility and ignored, as in xFormers."""
        if len(kv_seqlen) != len(q_seqlen):
            raise ValueError(f"q_seqlen and kv_seqlen must have one length per sequence, got "
                             f"{len(q_seqlen)} and {len(kv_seqlen)}")
        return cls(q_seqinfo=_SeqLenInfo.from_seqlens(q_seqlen, device=device),
                   k_seqinfo=_PaddedSeqLenInfo.from_seqlens_padded(kv_seqlen, kv_padding, device=device))

    def make_paged(self, block_tables: torch.Tensor, page_size: int,
                   paged_type: Type["PagedBlockDiagonalPaddedKeysMask"]) -> "PagedBlockDiagonalPaddedKeysMask":
        """The same mask over a paged key cache: block_tables[b, p] is the physical page holding keys
        p * page_size .. (p + 1) * page_size - 1 of sequence b.  paged_type sets the mask's rule."""
        keys = self.k_seqinfo
        padding = block_tables.shape[1] * page_size
        if keys.max_seqlen > padding:
            raise ValueError(f"a sequence uses {keys.max_seqlen} keys, more than its {block_tables.shape[1]} pages "
                             f"of {page_size} hold")
        seqstart_py = [b * padding for b in range(len(keys.seqlen_py) + 1)]
        # The used lengths keep their tensor: no new host-to-device copy for them.
        k_seqinfo = _PaddedSeqLenInfo(seqstart=_int32_tensor(seqstart_py, keys.seqlen.device),
                                      max_seqlen=keys.max_seqlen, min_seqlen=keys.min_seqlen,
                                      seqstart_py=seqstart_py, seqlen=keys.seqlen, seqlen_py=keys.seqlen_py,
                                      padding=padding)
        return paged_type(q_seqinfo=self.q_seqinfo, k_seqinfo=k_seqinfo, block_tables=block_tables,
                          page_size=page_size)


@dataclass(eq=False)
class BlockDiagonalCausalWithOffsetPaddedKeysMask(BlockDiagonalPaddedKeysMask):
    """Padded keys, each block causal from its bottom-right corner over its used keys: the last query
    of block b sees all kv_seqlen[b] keys (the decoding layout of a KV cache)."""

    causal_diagonal: Any = None  # accepted and ignored, as in xFormers
    _band = _CAUSAL_BOTTOM_RIGHT


@dataclass(eq=False)
class BlockDiagonalCausalLocalAttentionPaddedKeysMask(BlockDiagonalPaddedKeysMask):
    """`BlockDiagonalCausalWithOffsetPaddedKeysMask` with a window of `_window_size` keys ending at
    the diagonal."""

    _window_size: int

    def __post_init__(self) -> None:
        self._window_size = _check_window_size(self._window_size)

    @property
    def _band(self) -> _Band:
        return _Band(from_bottom_right=True, left=self._window_size - 1, right=0)

    @classmethod
    def from_seqlens_local(cls, q_seqlen: Sequence[int], kv_padding: int, kv_seqlen: Sequence[int],
                           window_size: int, *, device: Optional[Device] = None):
        mask = BlockDiagonalPaddedKeysMask.from_seqlens(q_seqlen, kv_padding, kv_seqlen, device=device)
        return cls(q_seqinfo=mask.q_seqinfo, k_seqinfo=mask.k_seqinfo, _window_size=window_size)


@dataclass(eq=False)
class BlockDiagonalLocalAttentionPaddedKeysMask(BlockDiagonalPaddedKeysMask):
    """`BlockDiagonalPaddedKeysMask` with `LocalAttentionFromBottomRightMask`'s band in each block (not causal):
    window_left keys before the block's bottom-right diagonal and window_right after it, over its used keys."""

    window_left: int
    window_right: int

    def __post_init__(self) -> None:
        _check_window_sides(self)

    @property
    def _band(self) -> _Band:
        return _Band(from_bottom_right=True, left=self.window_left, right=self.window_right)

    @classmethod
    def from_seqlens_local(cls, q_seqlen: Sequence[int], kv_padding: int, kv_seqlen: Sequence[int],
                           window_left: int, window_right: int, *, device: Optional[Device] = None):
        mask = BlockDiagonalPaddedKeysMask.from_seqlens(q_seqlen, kv_padding, kv_seqlen, device=device)
        return cls(q_seqinfo=mask.q_seqinfo, k_seqinfo=mask.k_seqinfo, window_left=window_left,
                   window_right=window_right)


# ----------------------------------------------------------------------------------- paged masks


@dataclass(eq=False)
class PagedBlockDiagonalPaddedKeysMask(AttentionBias):
    """`BlockDiagonalPaddedKeysMask` over a paged cache: keys and values are [1, num_pages * page_size,
    H, K], and block_tables [num_sequences, max_pages] (int32) maps each sequence's logical pages to
    physical ones."""

    q_seqinfo: _SeqLenInfo
    k_seqinfo: _PaddedSeqLenInfo
    block_tables: torch.Tensor
    page_size: int

    _UNPAGED_TYPE: ClassVar[Type[BlockDiagonalPaddedKeysMask]] = BlockDiagonalPaddedKeysMask

    @property
    def _band(self) -> _Band:
        return self._UNPAGED_TYPE._band

    def to(self, device: Device) -> "PagedBlockDiagonalPaddedKeysMask":
        return type(self)(q_seqinfo=self.q_seqinfo.to(device), k_seqinfo=self.k_seqinfo.to(device),
                          block_tables=self.block_tables.to(device), page_size=self.page_size)

    @classmethod
    def from_seqlens(cls, q_seqlen: Sequence[int], kv_seqlen: Sequence[int], block_tables: torch.Tensor,
                     page_size: int, *, device: Optional[Device] = None):
        if len(kv_seqlen) != len(q_seqlen):
            raise ValueError(f"q_seqlen and kv_seqlen must have one length per sequence, got "
                             f"{len(q_seqlen)} and {len(kv_seqlen)}")
        device = block_tables.device if device is None else device
        return cls(q_seqinfo=_SeqLenInfo.from_seqlens(q_seqlen, device=device),
                   k_seqinfo=_PaddedSeqLenInfo.from_seqlens_padded(
                       kv_seqlen, block_tables.shape[1] * page_size, device=device),
                   block_tables=block_tables, page_size=page_size)

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        """The bias against the physical key axis.

        As in xFormers, a shape whose last dimension is the logical width (num_sequences * max_pages
        * page_size) gives a bias over the pages in use, (block_tables.max() + 1) * page_size keys;
        any other last dimension is taken as the physical cache length and kept."""
        shape = _check_shape(shape)
        num_queries = self.q_seqinfo.seqstart_py[-1]
        if shape[-2] != num_queries:
            raise ValueError(f"{type(self).__name__} spans {num_queries} queries; materialize needs a shape "
                             f"[..., {num_queries}, num_keys], got {shape}")
        tables = self.block_tables.cpu().tolist()
        pages_in_use = max((max(row) for row in tables if row), default=-1) + 1
        logical_width = len(self.k_seqinfo.seqlen_py) * self.block_tables.shape[1] * self.page_size
        physical_length = pages_in_use * self.page_size if shape[-1] == logical_width else shape[-1]
        if physical_length < pages_in_use * self.page_size:
            raise ValueError(f"the block tables address {pages_in_use} pages of {self.page_size} keys; "
                             f"materialize needs a last dimension of at least {pages_in_use * self.page_size}, "
                             f"got {shape}")
        keep = torch.zeros(num_queries, physical_length, dtype=torch.bool, device=device)
        for b, ((q_start, q_end), used) in enumerate(zip(self.q_seqinfo.intervals(), self.k_seqinfo.seqlen_py)):
            logical = self._band.keep(q_end - q_start, used, device)
            for first_key in range(0, used, self.page_size):
                physical = tables[b][first_key // self.page_size] * self.page_size
                width = min(self.page_size, used - first_key)
                keep[q_start:q_end, physical:physical + width] = logical[:, first_key:first_key + width]
        return _additive(keep, shape[:-1] + (physical_length,), dtype, device)


@dataclass(eq=False)
class PagedBlockDiagonalCausalWithOffsetPaddedKeysMask(PagedBlockDiagonalPaddedKeysMask):
    """`BlockDiagonalCausalWithOffsetPaddedKeysMask` over a paged cache."""

    _UNPAGED_TYPE: ClassVar[Type[BlockDiagonalPaddedKeysMask]] = BlockDiagonalCausalWithOffsetPaddedKeysMask


VARLEN_BIASES = (BlockDiagonalMask, BlockDiagonalPaddedKeysMask, PagedBlockDiagonalPaddedKeysMask)
