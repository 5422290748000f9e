"""Padding helpers for variable-length batches, with flash-attn 2.x's names and semantics.

Models usually hold a batch as a padded (batch, seqlen, ...) tensor plus an attention mask.
The variable-length attention entry points take the packed form instead: the valid tokens of
all sequences laid end to end, (total_nnz, ...), described by cumulative sequence lengths.
`unpad_input` goes from the padded form to the packed form and returns what is needed to go
back (`indices`) and to call the kernels (`cu_seqlens`, `max_seqlen_in_batch`, `seqused`);
`pad_input` restores the padded form with zeros in the padding. Both are built on two
differentiable row gather/scatter primitives, `index_first_axis` and `index_put_first_axis`,
so gradients flow through the packing. Nothing here launches Triton: it is plain PyTorch and
runs on any device. The only device-to-host synchronisation is the one reading
`max_seqlen_in_batch` (plus the one `torch.nonzero` needs to size its output).

Usage, mirroring flash_attn.bert_padding::

    x_unpad, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, attention_mask)
    ...  # run attention on x_unpad
    out = pad_input(out_unpad, indices, batch, seqlen)
"""

import numbers

import torch

from flashtron.validation import require_tensor

__all__ = ["index_first_axis", "index_put_first_axis", "unpad_input", "pad_input",
           "unpad_input_for_concatenated_sequences"]

_INDEX_DTYPES = (torch.int32, torch.int64)


# ---------------------------------------------------------------------------------------------
# Argument checks: shapes, dtypes and devices only, so no device-to-host copies.
# ---------------------------------------------------------------------------------------------

def _check_indices(name, indices, other_name, other):
    require_tensor(name, indices)
    if indices.dim() != 1:
        raise ValueError(f"{name} must be 1-D (n,), got shape {tuple(indices.shape)}")
    if indices.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must have dtype int64 or int32, got {indices.dtype}")
    if indices.device != other.device:
        raise ValueError(f"{name} is on {indices.device} but {other_name} is on {other.device}; "
                         f"they must be on one device")


def _check_scatter_args(name, values, indices):
    """values (n, ...) and indices (n,), for the scatters; `name` is what the caller calls values."""
    require_tensor(name, values)
    if values.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension (n, ...), got a 0-d tensor")
    _check_indices("indices", indices, name, values)
    if indices.shape[0] != values.shape[0]:
        raise ValueError(f"indices must have one entry per row of {name} ({values.shape[0]}), "
                         f"got shape {tuple(indices.shape)}")


def _check_size(name, value):
    """A non-negative integer size; SymInts (torch.compile with dynamic shapes) pass through."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _check_mask(name, mask, hidden_states):
    require_tensor(name, mask)
    batch, seqlen = hidden_states.shape[:2]
    if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] != seqlen:
        raise ValueError(f"{name} must be (batch, seqlen) matching hidden_states' first two dims "
                         f"({batch}, {seqlen}), got shape {tuple(mask.shape)}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        # A float mask is often an additive one (0 = keep, -inf = drop), the opposite convention.
        raise TypeError(f"{name} must be bool or integer (nonzero = selected token), got {mask.dtype}")
    if mask.device != hidden_states.device:
        raise ValueError(f"{name} is on {mask.device} but hidden_states is on "
                         f"{hidden_states.device}; they must be on one device")
    return mask if mask.dtype == torch.bool else mask != 0


# ---------------------------------------------------------------------------------------------
# Row gather / scatter along the first axis.
# ---------------------------------------------------------------------------------------------

class _IndexFirstAxis(torch.autograd.Function):
    """out = input[indices]; the backward adds each gradient row back at its index."""

    @staticmethod
    def forward(ctx, input, indices):
        ctx.save_for_backward(indices)
        ctx.first_axis_dim = input.shape[0]
        # index_select along dim 0 reads whole rows, whatever the trailing shape.
        return torch.index_select(input, 0, indices)

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        grad_input = grad_output.new_zeros((ctx.first_axis_dim, *grad_output.shape[1:]))
        # index_add_ (not a plain copy) keeps the gradient right if an index repeats, and has a
        # deterministic CUDA implementation under torch.use_deterministic_algorithms.
        grad_input.index_add_(0, indices, grad_output)
        return grad_input, None


class _IndexPutFirstAxis(torch.autograd.Function):
    """out = zeros(first_axis_dim, ...); out[indices] = values; the backward gathers rows."""

    @staticmethod
    def forward(ctx, values, indices, first_axis_dim):
        ctx.save_for_backward(indices)
        output = values.new_zeros((first_axis_dim, *values.shape[1:]))
        output[indices] = values
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        return torch.index_select(grad_output, 0, indices), None, None


def index_first_axis(input, indices):
    """Gather rows of the first axis: ``input[indices]``, differentiable.

    input: (N, ...) of any dtype and trailing shape. indices: (n,) int64 or int32, on input's
    device, each in [0, N). Returns (n, ...) contiguous, input's dtype. The gradient w.r.t.
    input is zero except at the gathered rows.
    """
    require_tensor("input", input)
    if input.dim() < 1:
        raise ValueError("input must have at least one dimension (N, ...), got a 0-d tensor")
    _check_indices("indices", indices, "input", input)
    return _IndexFirstAxis.apply(input, indices)


def index_put_first_axis(values, indices, first_axis_dim):
    """Scatter rows into zeros: ``out = zeros(first_axis_dim, ...); out[indices] = values``.

    values: (n, ...). indices: (n,) int64 or int32, distinct, each in [0, first_axis_dim).
    first_axis_dim: int. Returns (first_axis_dim, ...) with values' dtype and device; rows not
    named by indices are zero. Differentiable w.r.t. values (the inverse of index_first_axis).
    """
    _check_scatter_args("values", values, indices)
    first_axis_dim = _check_size("first_axis_dim", first_axis_dim)
    return _IndexPutFirstAxis.apply(values, indices, first_axis_dim)


# ---------------------------------------------------------------------------------------------
# Padded <-> packed.
# ---------------------------------------------------------------------------------------------

def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """Pack the selected tokens of a padded batch.

    hidden_states: (batch, seqlen, ...). attention_mask: (batch, seqlen), bool or integer,
    nonzero = valid token. unused_mask: optional (batch, seqlen), nonzero = a token that is
    allocated in its sequence but not used (flash-attn 2.7's ``seqused`` convention).

    The selected tokens are ``attention_mask | unused_mask``, taken in row-major order (the
    masks need not be contiguous blocks). Returns

    - hidden_states_unpad: (total_nnz, ...), hidden_states' dtype;
    - indices: (total_nnz,) int64, positions of the selected tokens in the flattened
      (batch * seqlen) axis;
    - cu_seqlens: (batch + 1,) int32, 0 then the running count of selected tokens per sequence;
    - max_seqlen_in_batch: Python int, the most selected tokens in one sequence;
    - seqused: (batch,) int32, the attention_mask tokens of each sequence (equal to the
      per-sequence lengths when unused_mask is None).
    """
    require_tensor("hidden_states", hidden_states)
    if hidden_states.dim() < 2:
        raise ValueError(f"hidden_states must be (batch, seqlen, ...), "
                         f"got shape {tuple(hidden_states.shape)}")
    used = _check_mask("attention_mask", attention_mask, hidden_states)
    selected = used
    if unused_mask is not None:
        selected = used | _check_mask("unused_mask", unused_mask, hidden_states)

    seqlens = selected.sum(dim=-1, dtype=torch.int32)
    seqused = used.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(selected.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens.max().item()) if seqlens.numel() > 0 else 0
    cu_seqlens = torch.cat([seqlens.new_zeros(1), torch.cumsum(seqlens, dim=0, dtype=torch.int32)])

    flat = hidden_states.flatten(0, 1)  # a view unless the first two dims cannot be merged
    return index_first_axis(flat, indices), indices, cu_seqlens, max_seqlen_in_batch, seqused


def unpad_input_for_concatenated_sequences(hidden_states, attention_mask_in_length):
    """Pack rows that each hold several sequences end to end (flash-attn's form for concatenated samples).

    hidden_states: (batch, seqlen, ...). attention_mask_in_length: (batch, seqlen), integer: row b's
    nonzero entries, in order, are the lengths of the sequences laid end to end from position 0 of
    row b (e.g. [3, 2, 0, 0, 0, 0] for two sequences of 3 and 2 tokens in a row of 6); zeros
    elsewhere. Returns (hidden_states_unpad, indices, cu_seqlens, max_seqlen_in_batch) as
    unpad_input, but cu_seqlens has one entry per sequence (not per row), so each sequence
    attends only to itself in the variable-length kernels.
    """
    require_tensor("hidden_states", hidden_states)
    if hidden_states.dim() < 2:
        raise ValueError(f"hidden_states must be (batch, seqlen, ...), got shape {tuple(hidden_states.shape)}")
    require_tensor("attention_mask_in_length", attention_mask_in_length)
    batch, seqlen = hidden_states.shape[:2]
    if tuple(attention_mask_in_length.shape) != (batch, seqlen):
        raise ValueError(f"attention_mask_in_length must be (batch, seqlen) = ({batch}, {seqlen}), got shape "
                         f"{tuple(attention_mask_in_length.shape)}")
    if attention_mask_in_length.dtype.is_floating_point or attention_mask_in_length.dtype in (torch.bool,
                                                                                              torch.complex64,
                                                                                              torch.complex128):
        raise TypeError(f"attention_mask_in_length must hold integer lengths, got {attention_mask_in_length.dtype}")
    if attention_mask_in_length.device != hidden_states.device:
        raise ValueError(f"attention_mask_in_length is on {attention_mask_in_length.device} but hidden_states is on "
                         f"{hidden_states.device}; they must be on one device")
    lengths = attention_mask_in_length.long()
    row_tokens = lengths.sum(dim=-1)
    if bool((lengths < 0).any()) or bool((row_tokens > seqlen).any()):
        raise ValueError(f"attention_mask_in_length must hold non-negative lengths summing to at most seqlen = "
                         f"{seqlen} per row, got row sums {row_tokens.tolist()}")
    # A row's tokens are its first sum(lengths) positions; the sequences are its nonzero lengths in order.
    selected = torch.arange(seqlen, device=lengths.device)[None, :] < row_tokens[:, None]
    indices = torch.nonzero(selected.flatten(), as_tuple=False).flatten()
    seqlens = lengths.flatten()[lengths.flatten() != 0].to(torch.int32)
    max_seqlen_in_batch = int(seqlens.max().item()) if seqlens.numel() > 0 else 0
    cu_seqlens = torch.cat([seqlens.new_zeros(1), torch.cumsum(seqlens, dim=0, dtype=torch.int32)])
    return index_first_axis(hidden_states.flatten(0, 1), indices), indices, cu_seqlens, max_seqlen_in_batch


def pad_input(hidden_states, indices, batch, seqlen):
    """Unpack to a padded batch: the inverse of unpad_input, zeros in the padding.

    hidden_states: (total_nnz, ...). indices: (total_nnz,) int64 or int32, as returned by
    unpad_input. batch, seqlen: ints. Returns (batch, seqlen, ...) with hidden_states' dtype;
    differentiable w.r.t. hidden_states.
    """
    _check_scatter_args("hidden_states", hidden_states, indices)
    batch = _check_size("batch", batch)
    seqlen = _check_size("seqlen", seqlen)
    out = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return out.view(batch, seqlen, *hidden_states.shape[1:])
