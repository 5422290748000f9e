"""Rotary position embeddings (RoPE) with flash-attn's `flash_attn.layers.rotary` API.

`apply_rotary_emb` rotates the first rotary_dim = 2 * cos.shape[-1] columns of each head of x by
the angles of the token's position (position of token t of sequence b: seqlen_offsets[b] + t);
the other columns pass through.  `interleaved=False` pairs column j with j + rotary_dim / 2
(GPT-NeoX); `interleaved=True` pairs 2j with 2j + 1 (GPT-J).  `apply_rotary_emb_qkv_` and
`apply_rotary_emb_kv_` rotate q and k inside packed tensors, in place, and `RotaryEmbedding` is
the nn.Module that builds and caches the cos/sin tables (xPos included).  The way down: checks
here, then the custom ops `flashtron::rotary` (out of place, with autograd: the backward is the
inverse rotation) and `flashtron::rotary_` (in place), then the Triton kernel (CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1) or `rotate_torch` (CPU tensors).  Both compute in fp32 and round
once, so they agree.  Nothing here copies a CUDA tensor to the host unless
`flashtron.set_sequence_checks(True)` asks for the value checks.
"""

import math
import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from flashtron import validation
from flashtron.kernels import launch
from flashtron.kernels import rotary as kernels

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def use_triton(t: Tensor) -> bool:
    """The engine for t: the Triton kernels for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1),
    else PyTorch."""
    return t.device.type == "cuda" or launch.INTERPRET


def host_checks_enabled(t: Tensor) -> bool:
    """Whether to run value checks that read tensor contents on the host: always for CPU tensors, on CUDA
    only after `flashtron.set_sequence_checks(True)`, and never while torch.compile traces (fake tensors)."""
    if torch.compiler.is_compiling():
        return False
    return t.device.type == "cpu" or validation.sequence_checks_enabled()


# ----------------------------------------------------------------------------------------------
# flash_attn.layers.rotary's plain-PyTorch reference helpers, for code written against them.

def rotate_half(x: Tensor, interleaved: bool = False) -> Tensor:
    """Each column's partner in the rotation, signed: halves (x1, x2) -> (-x2, x1) of the last dim, or pairs
    (2j, 2j + 1) -> (-x[2j + 1], x[2j]) when interleaved."""
    if not interleaved:
        first, second = x.chunk(2, dim=-1)
        return torch.cat((-second, first), dim=-1)
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def apply_rotary_emb_torch(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotary embedding in plain PyTorch, in x's dtype: x (batch, seqlen, heads, head_dim), cos and sin
    (seqlen_ro >= seqlen, rotary_dim / 2), token t at position t; columns past rotary_dim pass through."""
    rotary_dim = 2 * cos.shape[-1]
    if rotary_dim > x.shape[-1]:
        raise ValueError(f"rotary_dim = 2 * cos.shape[-1] = {rotary_dim} exceeds x's head dim {x.shape[-1]}")
    seqlen = x.shape[1]
    if interleaved:
        cos_rows, sin_rows = (t[:seqlen].repeat_interleave(2, dim=-1)[:, None] for t in (cos, sin))
    else:
        cos_rows, sin_rows = (torch.cat((t[:seqlen], t[:seqlen]), dim=-1)[:, None] for t in (cos, sin))
    rotated = x[..., :rotary_dim]
    return torch.cat((rotated * cos_rows + rotate_half(rotated, interleaved) * sin_rows, x[..., rotary_dim:]), dim=-1)


# ----------------------------------------------------------------------------------------------
# The PyTorch engine (CPU tensors), shared with flashtron.cache_update.

def rotate_torch(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, interleaved: bool,
                 conjugate: bool = False, out: Optional[Tensor] = None) -> Tensor:
    """The rotation of x (..., heads, head_dim) whose token positions are `positions` (x.shape[:-2], any
    integer dtype), computed in fp32 and rounded once.  Positions outside [0, seqlen_ro) are left unrotated,
    as in the kernel.  Writes into `out` (may be x) when given, else into a new tensor."""
    seqlen_ro, rotary_half = cos.shape
    rotary_dim = 2 * rotary_half
    positions = positions.long()
    inside = ((positions >= 0) & (positions < seqlen_ro))[..., None, None]
    index = positions.clamp(0, max(seqlen_ro - 1, 0))
    cos_rows = torch.where(inside, cos.float()[index][..., None, :], 1.0)
    sin_rows = torch.where(inside, sin.float()[index][..., None, :], 0.0)
    if conjugate:
        sin_rows = -sin_rows
    if interleaved:
        first, second = slice(0, rotary_dim, 2), slice(1, rotary_dim, 2)
    else:
        first, second = slice(0, rotary_half), slice(rotary_half, rotary_dim)
    x_first, x_second = x[..., first].float(), x[..., second].float()
    out_first = x_first * cos_rows - x_second * sin_rows
    out_second = x_first * sin_rows + x_second * cos_rows
    if out is None:
        out = x.clone()
    out[..., first] = out_first.to(x.dtype)
    out[..., second] = out_second.to(x.dtype)
    return out


def _token_positions(x: Tensor, seqlen_offsets: Optional[Tensor], seqlen_offset: int,
                     cu_seqlens: Optional[Tensor]) -> Tensor:
    """Position of every token of x: (batch, seqlen), or (total,) when packed (host arithmetic: CPU only)."""
    if cu_seqlens is None:
        steps = torch.arange(x.shape[1], device=x.device)
        offsets = (seqlen_offsets.long() if seqlen_offsets is not None
                   else torch.full((x.shape[0],), seqlen_offset, device=x.device))
        return offsets[:, None] + steps[None, :]
    bounds = cu_seqlens.long()
    lengths = bounds[1:] - bounds[:-1]
    sequence = torch.repeat_interleave(torch.arange(lengths.shape[0], device=x.device), lengths)
    offsets = seqlen_offsets.long()[sequence] if seqlen_offsets is not None else seqlen_offset
    return torch.arange(x.shape[0], device=x.device) - bounds[sequence] + offsets


def _rotate(out: Tensor, x: Tensor, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen,
            interleaved, conjugate) -> None:
    if use_triton(x):
        kernels.apply_rotary(out, x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen,
                             interleaved, conjugate)
    elif x.numel():
        positions = _token_positions(x, seqlen_offsets, seqlen_offset, cu_seqlens)
        rotated = rotate_torch(x, cos, sin, positions, interleaved, conjugate, out=out if out is x else None)
        if out is not x:
            out.copy_(rotated)


# ----------------------------------------------------------------------------------------------
# Custom ops.

@torch.library.custom_op("flashtron::rotary", mutates_args=())
def rotary(x: Tensor, cos: Tensor, sin: Tensor, seqlen_offsets: Optional[Tensor], seqlen_offset: int,
           cu_seqlens: Optional[Tensor], max_seqlen: int, interleaved: bool, conjugate: bool) -> Tensor:
    """x rotated, in a new contiguous tensor.  seqlen_offsets (batch,) when given, else seqlen_offset for all;
    conjugate=True rotates backwards (the gradient)."""
    out = x.new_empty(x.shape)
    if launch.POISON_OUTPUTS and out.is_floating_point():
        out.fill_(float("nan"))
    _rotate(out, x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved, conjugate)
    return out


@rotary.register_fake
def _(x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved, conjugate):
    return x.new_empty(x.shape)


def _rotary_setup_context(ctx, inputs, output):
    x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved, conjugate = inputs
    ctx.save_for_backward(cos, sin, seqlen_offsets, cu_seqlens)
    ctx.params = (seqlen_offset, max_seqlen, interleaved, conjugate)


def _rotary_backward(ctx, grad):
    cos, sin, seqlen_offsets, cu_seqlens = ctx.saved_tensors
    seqlen_offset, max_seqlen, interleaved, conjugate = ctx.params
    # A rotation's transpose is its inverse: rotate the gradient backwards.
    grad_x = rotary(grad, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved,
                    not conjugate)
    return grad_x, None, None, None, None, None, None, None, None


rotary.register_autograd(_rotary_backward, setup_context=_rotary_setup_context)


@torch.library.custom_op("flashtron::rotary_", mutates_args=("x",))
def rotary_(x: Tensor, cos: Tensor, sin: Tensor, seqlen_offsets: Optional[Tensor], seqlen_offset: int,
            cu_seqlens: Optional[Tensor], max_seqlen: int, interleaved: bool, conjugate: bool) -> None:
    """x rotated in place; only its first rotary_dim columns are written."""
    _rotate(x, x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved, conjugate)


@rotary_.register_fake
def _(x, cos, sin, seqlen_offsets, seqlen_offset, cu_seqlens, max_seqlen, interleaved, conjugate):
    return None


# ----------------------------------------------------------------------------------------------
# Checks.

def _is_int(value) -> bool:
    return isinstance(value, (numbers.Integral, torch.SymInt)) and not isinstance(value, bool)


def check_cos_sin(cos, sin, head_dim: int, dtype: torch.dtype, device: torch.device, names=("cos", "sin"),
                  against: str = "x") -> Tuple[Tensor, Tensor]:
    """cos and sin (seqlen_ro, rotary_dim / 2), one dtype (`against`'s), one device; rotary_dim <= head_dim.
    Returns them contiguous."""
    cos_name, sin_name = names
    for name, t in zip(names, (cos, sin)):
        validation.require_tensor(name, t)
        if t.dim() != 2:
            raise ValueError(f"{name} must have 2 dimensions (seqlen_rotary, rotary_dim / 2), got shape "
                             f"{tuple(t.shape)}")
        if t.dtype != dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, but {against} has dtype {dtype}; they must match")
        if t.device != device:
            raise ValueError(f"{name} must be on {against}'s device {device}, got {t.device}")
    if sin.shape != cos.shape:
        raise ValueError(f"{cos_name} and {sin_name} must have the same shape, got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}")
    rotary_dim = 2 * cos.shape[1]
    if rotary_dim == 0:
        raise ValueError(f"{cos_name} must have at least one column (rotary_dim / 2 >= 1), got shape "
                         f"{tuple(cos.shape)}")
    if rotary_dim > head_dim:
        raise ValueError(f"rotary_dim = 2 * {cos_name}.shape[1] = {rotary_dim} exceeds the head dim {head_dim} "
                         f"of {against}; it must be <= head_dim")
    return cos.contiguous(), sin.contiguous()


def _check_x(x, varlen: bool, name: str = "x") -> None:
    validation.require_tensor(name, x)
    rank, layout = (3, "(total_seqlen, nheads, headdim)") if varlen else (4, "(batch, seqlen, nheads, headdim)")
    if x.dim() != rank:
        extra = " (cu_seqlens given)" if varlen else ""
        raise ValueError(f"{name} must have {rank} dimensions {layout}{extra}, got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; supported dtypes are float16, bfloat16 and float32")
    if x.device.type not in ("cuda", "cpu"):
        raise NotImplementedError(f"{name} is on device {x.device}; flashtron runs on CUDA GPUs and on the CPU")


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_offsets(seqlen_offsets, batch: int, seqlen: int, seqlen_ro: int, device, name: str):
    """Returns (tensor or None, int)."""
    if isinstance(seqlen_offsets, Tensor):
        if seqlen_offsets.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be an int or an int32/int64 tensor, got dtype {seqlen_offsets.dtype}")
        if tuple(seqlen_offsets.shape) != (batch,):
            raise ValueError(f"{name} must have shape (batch,) = ({batch},), got {tuple(seqlen_offsets.shape)}")
        if seqlen_offsets.device != device:
            raise ValueError(f"{name} must be on x's device {device}, got {seqlen_offsets.device}")
        return seqlen_offsets.contiguous(), 0
    if not _is_int(seqlen_offsets):
        raise TypeError(f"{name} must be an int or an int32 tensor of shape (batch,), got "
                        f"{type(seqlen_offsets).__name__}")
    if seqlen_offsets < 0:
        raise ValueError(f"{name} must be >= 0, got {seqlen_offsets}")
    if seqlen_offsets + seqlen > seqlen_ro:
        raise ValueError(f"{name} + seqlen = {seqlen_offsets} + {seqlen} exceeds the {seqlen_ro} positions of "
                         f"cos/sin; pass longer cos/sin tables")
    return None, seqlen_offsets


def _check_cu_seqlens(cu_seqlens, max_seqlen, device) -> int:
    validation.require_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(f"cu_seqlens must have shape (batch + 1,), got {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens must be on x's device {device}, got {cu_seqlens.device}")
    if max_seqlen is None:
        raise ValueError("max_seqlen is required with cu_seqlens (the longest sequence's length, an int)")
    if not _is_int(max_seqlen):
        raise TypeError(f"max_seqlen must be an int, got {type(max_seqlen).__name__}")
    if max_seqlen < 0:
        raise ValueError(f"max_seqlen must be >= 0, got {max_seqlen}")
    return max_seqlen


def _check_values_on_host(x, cu_seqlens, max_seqlen, seqlen_offsets, seqlen_ro, name) -> None:
    """Value checks that read tensors: cu_seqlens well formed, every rotated position within cos/sin."""
    if cu_seqlens is None:
        lengths = [x.shape[1]] * x.shape[0]
    else:
        bounds = cu_seqlens.tolist()
        lengths = [b - a for a, b in zip(bounds, bounds[1:])]
        if bounds[0] != 0 or any(n < 0 for n in lengths) or bounds[-1] != x.shape[0]:
            raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at the number of tokens "
                             f"({x.shape[0]}), got {bounds}")
        if max(lengths, default=0) > max_seqlen:
            raise ValueError(f"max_seqlen ({max_seqlen}) is smaller than the longest sequence "
                             f"({max(lengths)}) in cu_seqlens")
    if seqlen_offsets is not None:
        offsets = seqlen_offsets.tolist()
        bad = [(o, n) for o, n in zip(offsets, lengths) if o < 0 or o + n > seqlen_ro]
        if bad:
            raise ValueError(f"{name} must hold values o with 0 <= o and o + seqlen <= {seqlen_ro} (the positions "
                             f"of cos/sin), got {offsets} for sequence lengths {lengths}")


# ----------------------------------------------------------------------------------------------
# Public functions.

def _apply(x, cos, sin, interleaved, inplace, seqlen_offsets, cu_seqlens, max_seqlen, name="x",
           offsets_name="seqlen_offsets"):
    """Checks, then the rotation of x (x itself when in place)."""
    varlen = cu_seqlens is not None
    _check_x(x, varlen, name)
    _check_bool("interleaved", interleaved)
    _check_bool("inplace", inplace)
    cos, sin = check_cos_sin(cos, sin, x.shape[-1], x.dtype, x.device, against=name)
    seqlen_ro = cos.shape[0]
    if varlen:
        max_seqlen = _check_cu_seqlens(cu_seqlens, max_seqlen, x.device)
        batch, seqlen = cu_seqlens.shape[0] - 1, max_seqlen
        cu_seqlens = cu_seqlens.contiguous()
    else:
        batch, seqlen, max_seqlen = x.shape[0], x.shape[1], x.shape[1]
    if seqlen > seqlen_ro:
        raise ValueError(f"cos/sin have {seqlen_ro} positions, fewer than the sequence length {seqlen} of {name}; "
                         "pass longer cos/sin tables")
    offsets_tensor, offset = _check_offsets(seqlen_offsets, batch, seqlen, seqlen_ro, x.device, offsets_name)
    if host_checks_enabled(x):
        _check_values_on_host(x, cu_seqlens, max_seqlen, offsets_tensor, seqlen_ro, offsets_name)
    args = (cos, sin, offsets_tensor, offset, cu_seqlens, max_seqlen, interleaved, False)
    if not inplace:
        return rotary(x, *args)
    if any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape)):
        # An expanded tensor: one element per several positions, which an in-place rotation would turn repeatedly.
        raise ValueError(f"inplace=True needs {name} to hold each element once; it has a stride 0 dimension "
                         f"(an expand), strides {tuple(x.stride())}: pass inplace=False or a copy")
    if torch.is_grad_enabled() and x.requires_grad:
        # The in-place op has no autograd formula (torch.library allows none on mutating ops); going through
        # the functional op and copy_ keeps the gradient exact and the graph whole.
        return x.copy_(rotary(x, *args))
    rotary_(x, *args)
    return x


def apply_rotary_emb(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False, inplace: bool = False,
                     seqlen_offsets: Union[int, Tensor] = 0, cu_seqlens: Optional[Tensor] = None,
                     max_seqlen: Optional[int] = None) -> Tensor:
    """Rotary embedding of the first rotary_dim = 2 * cos.shape[1] columns of every head of x.

    x: (batch, seqlen, nheads, headdim), or (total_seqlen, nheads, headdim) with cu_seqlens (int32
    (batch + 1,)) and max_seqlen (int).  cos, sin: (seqlen_rotary, rotary_dim / 2), x's dtype and
    device; rotary_dim <= headdim.  interleaved: rotate pairs (2j, 2j + 1) (GPT-J) instead of
    (j, j + rotary_dim / 2) (GPT-NeoX).  seqlen_offsets: int, or int32/int64 tensor (batch,); token t
    of sequence b sits at position seqlen_offsets[b] + t (KV-cache decoding).  inplace: write into x
    and return it.  Differentiable w.r.t. x.  Returns a tensor shaped like x.
    """
    return _apply(x, cos, sin, interleaved, inplace, seqlen_offsets, cu_seqlens, max_seqlen)


apply_rotary_emb_func = apply_rotary_emb


def _check_packed(name: str, t, expected_rank_layout: str):
    validation.require_tensor(name, t)
    if t.dim() not in (4, 5):
        raise ValueError(f"{name} must have shape {expected_rank_layout}, got {tuple(t.shape)}")


def apply_rotary_emb_qkv_(qkv: Tensor, cos: Tensor, sin: Tensor, cos_k: Optional[Tensor] = None,
                          sin_k: Optional[Tensor] = None, interleaved: bool = False,
                          seqlen_offsets: Union[int, Tensor] = 0, num_heads_q: Optional[int] = None) -> Tensor:
    """Rotate q and k of a packed qkv in place; v is untouched.  Returns qkv.

    qkv: (batch, seqlen, 3, nheads, headdim), or (batch, seqlen, num_heads_q + 2 * num_heads_k, headdim)
    with num_heads_q given (MQA/GQA).  cos, sin rotate q; cos_k, sin_k (default cos, sin) rotate k.
    """
    layout = "(batch, seqlen, 3, nheads, headdim) or (batch, seqlen, num_heads_q + 2 * num_heads_k, headdim)"
    _check_packed("qkv", qkv, layout)
    if (cos_k is None) != (sin_k is None):
        raise ValueError("cos_k and sin_k must be given together (or neither, to rotate k with cos and sin)")
    if qkv.dim() == 5:
        if qkv.shape[2] != 3:
            raise ValueError(f"qkv must have size 3 in dimension 2 (batch, seqlen, 3, nheads, headdim), got shape "
                             f"{tuple(qkv.shape)}")
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    else:
        if not _is_int(num_heads_q):
            raise ValueError(f"num_heads_q (an int) is required when qkv has 4 dimensions {layout}, got "
                             f"{num_heads_q!r}")
        total_heads = qkv.shape[2]
        num_heads_k = (total_heads - num_heads_q) // 2
        if num_heads_q < 1 or num_heads_k < 1 or num_heads_q + 2 * num_heads_k != total_heads:
            raise ValueError(f"qkv's {total_heads} heads are not num_heads_q + 2 * num_heads_k with num_heads_q = "
                             f"{num_heads_q} and num_heads_k >= 1")
        q, k = qkv[:, :, :num_heads_q], qkv[:, :, num_heads_q:num_heads_q + num_heads_k]
    if cos_k is None:
        cos_k, sin_k = cos, sin
    _apply(q, cos, sin, interleaved, True, seqlen_offsets, None, None, name="q (of qkv)")
    _apply(k, cos_k, sin_k, interleaved, True, seqlen_offsets, None, None, name="k (of qkv)")
    return qkv


def apply_rotary_emb_kv_(kv: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False,
                         seqlen_offsets: Union[int, Tensor] = 0) -> Tensor:
    """Rotate k of a packed kv (batch, seqlen, 2, nheads, headdim) in place; v is untouched.  Returns kv."""
    validation.require_tensor("kv", kv)
    if kv.dim() != 5 or kv.shape[2] != 2:
        raise ValueError(f"kv must have shape (batch, seqlen, 2, nheads, headdim), got {tuple(kv.shape)}")
    _apply(kv[:, :, 0], cos, sin, interleaved, True, seqlen_offsets, None, None, name="k (of kv)")
    return kv


# ----------------------------------------------------------------------------------------------
# The module.

class RotaryEmbedding(torch.nn.Module):
    """Rotary position embeddings (RoFormer, Su et al.), with flash-attn's module API.

    dim: rotary_dim (even); the first dim columns of each head rotate.  base: the frequency base,
    inverse frequencies base ** (-2j / dim).  scale_base: when given, xPos (Sun et al.): q is scaled by
    scale ** ((position - seqlen // 2) / scale_base) and k by its inverse, with
    scale = (2j + 0.4 dim) / (1.4 dim).  pos_idx_in_fp32: build positions in fp32 (else in inv_freq's
    dtype, which loses precision in bf16).  forward(qkv, kv=None, seqlen_offset=0, max_seqlen=None,
    num_heads_q=None) rotates in place and returns qkv, or (q, kv) when kv is given.
    """

    def __init__(self, dim: int, base: float = 10000.0, interleaved: bool = False, scale_base=None,
                 pos_idx_in_fp32: bool = True, device=None):
        super().__init__()
        if not _is_int(dim) or dim < 2 or dim % 2:
            raise ValueError(f"dim (the rotary dim) must be an even int >= 2, got {dim!r}")
        if isinstance(base, bool) or not isinstance(base, numbers.Real) or not (math.isfinite(base) and base > 0):
            raise ValueError(f"base (the frequency base) must be a finite number > 0, got {base!r}")
        if scale_base is not None and not (isinstance(scale_base, numbers.Real) and scale_base > 0):
            raise ValueError(f"scale_base must be None or a positive number (xPos), got {scale_base!r}")
        self.dim = dim
        self.base = float(base)
        self.interleaved = interleaved
        self.scale_base = scale_base
        self.pos_idx_in_fp32 = pos_idx_in_fp32
        self.register_buffer("inv_freq", self._compute_inv_freq(device), persistent=False)
        scale = self._compute_scale(device) if scale_base is not None else None
        self.register_buffer("scale", scale, persistent=False)
        self._seq_len_cached = 0
        self._cos_cached = None
        self._sin_cached = None
        self._cos_k_cached = None
        self._sin_k_cached = None

    def _compute_inv_freq(self, device=None) -> Tensor:
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim))

    def _compute_scale(self, device=None) -> Tensor:
        return (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) + 0.4 * self.dim) / (1.4 * self.dim)

    def _update_cos_sin_cache(self, seqlen: int, device=None, dtype=None) -> None:
        # Rebuild when the tables are too short, on another device or dtype, or were built under
        # inference mode and are now needed for training.
        if (seqlen <= self._seq_len_cached and self._cos_cached is not None
                and self._cos_cached.device == device and self._cos_cached.dtype == dtype
                and not (self.training and self._cos_cached.is_inference())):
            return
        self._seq_len_cached = seqlen
        if self.pos_idx_in_fp32:
            positions = torch.arange(seqlen, device=device, dtype=torch.float32)
            # A module-wide .half() may have narrowed inv_freq; the angles need fp32.
            inv_freq = (self.inv_freq if self.inv_freq.dtype == torch.float32
                        else self._compute_inv_freq(device=device))
        else:
            positions = torch.arange(seqlen, device=device, dtype=self.inv_freq.dtype)
            inv_freq = self.inv_freq
        angles = torch.outer(positions, inv_freq.to(positions.device))
        if self.scale is None:
            self._cos_cached = torch.cos(angles).to(dtype)
            self._sin_cached = torch.sin(angles).to(dtype)
            return
        scale = self.scale if self.scale.dtype == torch.float32 else self._compute_scale(device=device)
        power = (torch.arange(seqlen, dtype=torch.float32, device=angles.device) - seqlen // 2) / self.scale_base
        scale = scale.to(angles.device) ** power[:, None]
        self._cos_cached = (torch.cos(angles) * scale).to(dtype)
        self._sin_cached = (torch.sin(angles) * scale).to(dtype)
        self._cos_k_cached = (torch.cos(angles) / scale).to(dtype)
        self._sin_k_cached = (torch.sin(angles) / scale).to(dtype)

    def forward(self, qkv: Tensor, kv: Optional[Tensor] = None, seqlen_offset: Union[int, Tensor] = 0,
                max_seqlen: Optional[int] = None,
                num_heads_q: Optional[int] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """qkv: (batch, seqlen, 3, nheads, headdim) or (batch, seqlen, num_heads_q + 2 * num_heads_k, headdim);
        or q (batch, seqlen, nheads, headdim) when kv (batch, seqlen, 2, nheads_k, headdim) is given.
        seqlen_offset: int, or tensor (batch,), in which case pass max_seqlen to size the tables.
        Rotates in place; returns qkv, or (q, kv)."""
        validation.require_tensor("qkv", qkv)
        seqlen = qkv.shape[1]
        if not (_is_int(seqlen_offset) or isinstance(seqlen_offset, Tensor)):
            raise TypeError(f"seqlen_offset must be an int or an int32 tensor (batch,), got "
                            f"{type(seqlen_offset).__name__}")
        if _is_int(seqlen_offset) and seqlen_offset < 0:
            raise ValueError(f"seqlen_offset must be >= 0, got {seqlen_offset}")
        if max_seqlen is not None and not (_is_int(max_seqlen) and max_seqlen >= 0):
            raise TypeError(f"max_seqlen must be an int >= 0 or None, got {max_seqlen!r}")
        if max_seqlen is not None:
            self._update_cos_sin_cache(max_seqlen, device=qkv.device, dtype=qkv.dtype)
        elif _is_int(seqlen_offset):
            self._update_cos_sin_cache(seqlen + seqlen_offset, device=qkv.device, dtype=qkv.dtype)
        elif (self._cos_cached is None or self._cos_cached.device != qkv.device
              or self._cos_cached.dtype != qkv.dtype):
            raise ValueError("with a tensor seqlen_offset, pass max_seqlen (the largest position + 1) so the "
                             "cos/sin tables can be built")
        xpos = self.scale is not None
        cos_k = self._cos_k_cached if xpos else self._cos_cached
        sin_k = self._sin_k_cached if xpos else self._sin_cached
        if kv is None:
            return apply_rotary_emb_qkv_(qkv, self._cos_cached, self._sin_cached, cos_k if xpos else None,
                                         sin_k if xpos else None, interleaved=self.interleaved,
                                         seqlen_offsets=seqlen_offset, num_heads_q=num_heads_q)
        q = apply_rotary_emb(qkv, self._cos_cached, self._sin_cached, interleaved=self.interleaved, inplace=True,
                             seqlen_offsets=seqlen_offset)
        kv = apply_rotary_emb_kv_(kv, cos_k, sin_k, interleaved=self.interleaved, seqlen_offsets=seqlen_offset)
        return q, kv

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, base={self.base}, interleaved={self.interleaved}, scale_base={self.scale_base}, "
                f"pos_idx_in_fp32={self.pos_idx_in_fp32}")
