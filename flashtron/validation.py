"""Checks and normalisation of user arguments, done once at the public entry.

Every message names the argument, what it got and what would work; the layer
below (custom ops, launcher, kernels) trusts what leaves this module.
Valid requests that cannot be served (a head dim over 256, a device other than
CUDA or CPU) raise NotImplementedError.
"""

import math
import numbers

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPE = torch.float8_e4m3fn
MAX_HEAD_DIM = 256


def require_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _require_rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions {layout}, got shape {tuple(t.shape)}")


def check_packed(name: str, t, rank: int, packed_dim: int, count: int, layout: str) -> None:
    """For qkv (B, S, 3, H, D) and kv (B, S, 2, Hk, D)."""
    require_tensor(name, t)
    _require_rank(name, t, rank, layout)
    if t.shape[packed_dim] != count:
        raise ValueError(f"{name} must have size {count} in dimension {packed_dim} {layout}, "
                         f"got shape {tuple(t.shape)}")


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any strides but need contiguous head dims; other layouts are copied.
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def check_qkv(q, k, v, names=("q", "k", "v"), varlen: bool = False, paged: bool = False,
              allow_fp8: bool = False):
    """Validate q (B, Sq, H, D), k and v (B, Sk, Hk, D), or with varlen q (total_q, H, D) and k, v
    (total_k, Hk, D); return them with unit head-dim stride.

    `names` are what the caller passed (qkv or kv for the packed forms), for the messages.  paged: k
    and v are (num_pages, page_size, Hk, D).  allow_fp8: float8_e4m3fn inputs are accepted (the
    forward-only FP8 path of flash_attn_func and flash_attn_varlen_func).
    """
    q_name, k_name, v_name = names
    for name, t in zip(names, (q, k, v)):
        require_tensor(name, t)
    rank, layout = ((3, "(total_tokens, num_heads, head_dim)") if varlen
                    else (4, "(batch, seqlen, num_heads, head_dim)"))
    _require_rank(q_name, q, rank, layout)
    if paged:
        rank, layout = 4, "(num_pages, page_size, num_heads_k, head_dim) with block_table"
    for name, t in ((k_name, k), (v_name, v)):
        _require_rank(name, t, rank, layout)
    if not (q.device == k.device == v.device):
        raise ValueError(f"{q_name}, {k_name} and {v_name} must be on one device, got {q_name} on {q.device}, "
                         f"{k_name} on {k.device}, {v_name} on {v.device}")
    if q.device.type not in ("cuda", "cpu"):
        raise NotImplementedError(f"{q_name} is on device {q.device}; flashtron runs on CUDA GPUs and on the CPU")
    if q.dtype == FP8_DTYPE and not allow_fp8:
        raise TypeError(f"{q_name} has dtype float8_e4m3fn, which only flash_attn_func and flash_attn_varlen_func "
                        "take (forward only); use float16, bfloat16 or float32 here")
    if q.dtype not in SUPPORTED_DTYPES + (FP8_DTYPE,):
        raise TypeError(f"{q_name} has dtype {q.dtype}; supported dtypes are float16, bfloat16, float32 and "
                        "float8_e4m3fn (forward only)")
    for name, t in ((k_name, k), (v_name, v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype}, but {q_name} has dtype {q.dtype}; they must match")
    num_heads, head_dim = q.shape[-2:]
    if not varlen and not paged and (k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]):
        raise ValueError(f"batch sizes differ: {q_name} has {q.shape[0]}, {k_name} has {k.shape[0]}, {v_name} has "
                         f"{v.shape[0]}")
    if v.shape[:-1] != k.shape[:-1]:
        what = "(total_tokens, num_heads)" if varlen else "(batch, seqlen, num_heads)"
        raise ValueError(f"{k_name} and {v_name} must agree in {what}, got {k_name} {tuple(k.shape)} and {v_name} "
                         f"{tuple(v.shape)}")
    if k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        raise ValueError(f"head dims differ: {q_name} has {head_dim}, {k_name} has {k.shape[-1]}, {v_name} has "
                         f"{v.shape[-1]}; they must be equal")
    if head_dim < 1:
        raise ValueError(f"head_dim (last dimension of q) must be at least 1, got {head_dim}")
    if head_dim > MAX_HEAD_DIM:
        raise NotImplementedError(f"head_dim {head_dim} is over the supported maximum of {MAX_HEAD_DIM}")
    num_heads_kv = k.shape[-2]
    if num_heads_kv < 1 or num_heads % num_heads_kv != 0:
        raise ValueError(f"the number of query heads ({num_heads}) must be a multiple of the number of "
                         f"key/value heads ({num_heads_kv}) (MQA/GQA)")
    return _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)


# Checks of cu_seqlens' values need their contents on the host: a device-to-host copy and a
# synchronisation on CUDA.  They run on CPU tensors always, on CUDA tensors only when enabled.
_check_sequence_values = False


def set_sequence_checks(enabled: bool) -> None:
    """Turn on (or off) the value checks of cu_seqlens and seqused for CUDA tensors: non-decreasing,
    starting at 0, ending at the token count, lengths within max_seqlen.  They synchronise with the
    device, so they are off by default; CPU tensors are always checked."""
    global _check_sequence_values
    check_flag("enabled", enabled)
    _check_sequence_values = enabled


def sequence_checks_enabled() -> bool:
    """Whether value checks that read index tensors on the host run on CUDA tensors too."""
    return _check_sequence_values


def check_index_tensor(name: str, t, length: int, device: torch.device) -> None:
    require_tensor(name, t)
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on q's device {device}, got {t.device}")


def check_sequences(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q, k, seqused_q=None, seqused_k=None,
                    paged: bool = False):
    """Validate a variable-length batch: cu_seqlens int32 (B + 1,), max_seqlen ints >= 0, seqused int32
    (B,) or None.  Returns (batch, max_seqlen_q, max_seqlen_k, cu_q, cu_k, used_q, used_k), contiguous.
    With paged keys, cu_seqlens_k accumulates key lengths but indexes no packed tensor."""
    require_tensor("cu_seqlens_q", cu_seqlens_q)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] < 1:
        raise ValueError(f"cu_seqlens_q must have shape (batch + 1,), got {tuple(cu_seqlens_q.shape)}")
    batch = cu_seqlens_q.shape[0] - 1
    check_index_tensor("cu_seqlens_q", cu_seqlens_q, batch + 1, q.device)
    check_index_tensor("cu_seqlens_k", cu_seqlens_k, batch + 1, q.device)
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    for name, used in (("seqused_q", seqused_q), ("seqused_k", seqused_k)):
        if used is not None:
            check_index_tensor(name, used, batch, q.device)
    if q.device.type == "cpu" or _check_sequence_values:
        _check_sequence_values_on_host(cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                       q.shape[0], None if paged else k.shape[0], seqused_q, seqused_k)
    return (batch, int(max_seqlen_q), int(max_seqlen_k), cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(),
            None if seqused_q is None else seqused_q.contiguous(),
            None if seqused_k is None else seqused_k.contiguous())


def _check_sequence_values_on_host(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, total_q, total_k,
                                   seqused_q, seqused_k, check_max_seqlen: bool = True) -> None:
    if torch.compiler.is_compiling():
        # Tracing sees fake tensors, whose values cannot be read.
        return
    for name, cu, total, max_seqlen, used, used_name in (
            ("cu_seqlens_q", cu_seqlens_q, total_q, max_seqlen_q, seqused_q, "seqused_q"),
            ("cu_seqlens_k", cu_seqlens_k, total_k, max_seqlen_k, seqused_k, "seqused_k")):
        values = cu.tolist()
        if values[0] != 0:
            raise ValueError(f"{name} must start at 0, got {values[0]}")
        lengths = [b - a for a, b in zip(values, values[1:])]
        if any(n < 0 for n in lengths):
            raise ValueError(f"{name} must be non-decreasing, got {values}")
        if total is not None and values[-1] != total:
            raise ValueError(f"{name} must end at the number of tokens ({total}), got {values[-1]}")
        longest = max(lengths, default=0)
        if check_max_seqlen and longest > max_seqlen:
            raise ValueError(f"max_seqlen_{name[-1]} ({max_seqlen}) is smaller than the longest sequence "
                             f"({longest}) in {name}")
        if used is not None:
            used_values = used.tolist()
            if any(u < 0 or u > n for u, n in zip(used_values, lengths)):
                raise ValueError(f"{used_name} must hold values in [0, sequence length], got {used_values} "
                                 f"for lengths {lengths}")


def check_values_when_run(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q, seqused_k,
                          block_table, cache_batch_idx, cache_leftpad) -> None:
    """The value checks of the public functions (cu_seqlens and seqused, block_table's pages, a KV cache's rows), for
    the attention op's own implementation: under torch.compile the public functions run on fake tensors and skip
    them, and the op runs on the real ones.  Where these checks are on (CPU tensors, or `set_sequence_checks`).
    Only what keeps the kernels inside the tensors: a max_seqlen below a sequence's length (which computes its first
    max_seqlen rows) is how ring attention's block calls use the op."""
    if not (q.device.type == "cpu" or _check_sequence_values):
        return
    if cu_seqlens_q is not None:
        _check_sequence_values_on_host(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, q.shape[0],
                                       None if block_table is not None else k.shape[0], seqused_q, seqused_k,
                                       check_max_seqlen=False)
    elif seqused_k is not None:  # a KV cache's keys per sequence
        rows = k.shape[1] * (1 if block_table is None else block_table.shape[1])
        if ((seqused_k < 0) | (seqused_k > rows)).any():
            raise ValueError(f"the keys per sequence (cache_seqlens plus new tokens) must lie in [0, {rows}], got "
                             f"{seqused_k.tolist()}")
        if cache_leftpad is not None:
            check_cache_leftpad(cache_leftpad, seqused_k)
    if cache_batch_idx is not None:
        check_cache_rows(cache_batch_idx, k.shape[0])
    if block_table is not None:
        check_page_indices(block_table, k.shape[0])


def check_cache_rows(cache_batch_idx: torch.Tensor, num_rows: int) -> None:
    """cache_batch_idx's entries index a cache of num_rows rows (read on the host)."""
    if ((cache_batch_idx < 0) | (cache_batch_idx >= num_rows)).any():
        raise ValueError(f"cache_batch_idx entries must be in [0, {num_rows}), got {cache_batch_idx.tolist()}")


def check_cache_leftpad(cache_leftpad: torch.Tensor, lengths: torch.Tensor) -> None:
    """Each row's left padding lies within its cached tokens (read on the host)."""
    if ((cache_leftpad < 0) | (cache_leftpad > lengths)).any():
        raise ValueError(f"cache_leftpad entries must lie in [0, cache_seqlens[b]], got {cache_leftpad.tolist()} "
                         f"for {lengths.tolist()} tokens")


def check_page_indices(block_table: torch.Tensor, num_pages: int, name: str = "block_table") -> None:
    """A page table's entries index the cache's num_pages pages (read on the host)."""
    if block_table.numel() and (block_table.min() < 0 or block_table.max() >= num_pages):
        raise ValueError(f"{name} entries must be page indices in [0, {num_pages}), got values in "
                         f"[{int(block_table.min())}, {int(block_table.max())}]")


def check_block_table(block_table, k, batch: int, max_seqlen_k: int, name: str = "block_table"):
    """A paged cache's page table: int32 (batch, pages per sequence) on k's device, enough pages for
    max_seqlen_k keys; its entries (checked where cu_seqlens are, see set_sequence_checks) index k's
    pages.  Returns it contiguous."""
    require_tensor(name, block_table)
    if block_table.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {block_table.dtype}")
    if block_table.dim() != 2 or block_table.shape[0] != batch:
        raise ValueError(f"{name} must have shape ({batch}, pages_per_sequence), got {tuple(block_table.shape)}")
    if block_table.device != k.device:
        raise ValueError(f"{name} must be on the cache's device {k.device}, got {block_table.device}")
    num_pages, page_size = k.shape[0], k.shape[1]
    if page_size < 1:
        raise ValueError(f"the paged cache's page size (dimension 1 of k) must be >= 1, got {page_size}")
    if max_seqlen_k > block_table.shape[1] * page_size:
        raise ValueError(f"{name} holds {block_table.shape[1]} pages of {page_size} keys per sequence, fewer than "
                         f"the {max_seqlen_k} keys a sequence may have")
    if (k.device.type == "cpu" or _check_sequence_values) and not torch.compiler.is_compiling():
        check_page_indices(block_table, num_pages, name)
    return block_table.contiguous()


# Magnitudes of the normal float32 numbers, within a factor 2 of the extremes: a scale or softcap outside them would
# round to 0 or infinity in the kernels' float32 (a Python float beyond float32 also makes Triton type the argument
# float64), and the scale's base-2 form (times log2 e) must stay finite.
_FLOAT32_NORMAL = (2.0 ** -126, 2.0 ** 126)


def _finite(value) -> bool:
    """math.isfinite by comparisons, which torch.compile also traces on a symbolic float (dynamic=True, or a float
    argument that changed between calls)."""
    return -math.inf < value < math.inf


def softmax_scale_or_default(softmax_scale, head_dim: int, name: str = "softmax_scale") -> float:
    """The scale, head_dim ** -0.5 for None; name: the caller's argument, for the messages."""
    if softmax_scale is None:
        return head_dim ** -0.5
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"{name} must be a float or None, got {type(softmax_scale).__name__}")
    if not _finite(softmax_scale):
        raise ValueError(f"{name} must be finite, got {softmax_scale}")
    if softmax_scale != 0 and not _FLOAT32_NORMAL[0] <= abs(softmax_scale) <= _FLOAT32_NORMAL[1]:
        raise ValueError(f"{name} must be 0 or of magnitude in [2**-126, 2**126] (the kernels compute in "
                         f"float32), got {softmax_scale}")
    return float(softmax_scale)


UNBOUNDED_WINDOW = 2 ** 30


def window_bounds(causal, window_size) -> tuple[int, int]:
    """(window_left, window_right), -1 meaning unbounded; causal sets window_right to 0.

    Query i sees key j iff i + Sk - Sq - left <= j <= i + Sk - Sq + right (flash-attn 2.3+).
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
            or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) for w in window_size)):
        raise ValueError(f"window_size must be a pair of ints (left, right), -1 for unbounded, got {window_size!r}")
    left, right = (int(w) for w in window_size)
    if left < -1 or right < -1:
        raise ValueError(f"window_size entries must be >= -1 (-1 means unbounded), got {window_size!r}")
    # A side of UNBOUNDED_WINDOW keys or more bounds nothing in any sequence a tensor can hold; passed on as it is,
    # the kernels' int32 index arithmetic wrapped near 2**31 (every row then saw no key), and beyond it the Hopper
    # kernels failed to compile (an int64 argument).
    left, right = (-1 if w >= UNBOUNDED_WINDOW else w for w in (left, right))
    return left, 0 if causal else right


def _require_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    return float(value)


def check_dropout(dropout_p, name: str = "dropout_p") -> float:
    """dropout_p as a float in [0, 1); name: the caller's argument, for the messages."""
    dropout_p = _require_real(name, dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {dropout_p!r}")
    return dropout_p


def check_softcap(softcap) -> float:
    softcap = _require_real("softcap", softcap)
    if not (softcap >= 0.0 and _finite(softcap)):
        raise ValueError(f"softcap must be a finite float >= 0 (0 disables it), got {softcap!r}")
    if softcap != 0 and not _FLOAT32_NORMAL[0] <= softcap <= _FLOAT32_NORMAL[1]:
        raise ValueError(f"softcap must be 0 or in [2**-126, 2**126] (the kernels compute in float32), got {softcap!r}")
    return softcap


def check_alibi_slopes(alibi_slopes, q: torch.Tensor, batch: int):
    """None, or float32 slopes of shape (H,) or (B, H) on q's device, made contiguous."""
    if alibi_slopes is None:
        return None
    require_tensor("alibi_slopes", alibi_slopes)
    num_heads = q.shape[-2]
    if tuple(alibi_slopes.shape) not in ((num_heads,), (batch, num_heads)):
        raise ValueError(f"alibi_slopes must have shape ({num_heads},) or ({batch}, {num_heads}), "
                         f"got {tuple(alibi_slopes.shape)}")
    if alibi_slopes.dtype != torch.float32:
        raise TypeError(f"alibi_slopes must be float32, got {alibi_slopes.dtype}")
    if alibi_slopes.device != q.device:
        raise ValueError(f"alibi_slopes must be on q's device {q.device}, got {alibi_slopes.device}")
    return alibi_slopes.contiguous()


def check_attn_bias(attn_bias, q: torch.Tensor, k: torch.Tensor):
    """None, or an additive bias broadcastable to (B, H, Sq, Sk), returned as a 4-D view (size-1 dims
    kept: the launcher gives them stride 0, so a broadcast bias is never copied)."""
    if attn_bias is None:
        return None
    require_tensor("attn_bias", attn_bias)
    target = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if attn_bias.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"attn_bias must be float16, bfloat16 or float32 (additive; turn a boolean mask into "
                        f"0 / -inf first), got {attn_bias.dtype}")
    if attn_bias.device != q.device:
        raise ValueError(f"attn_bias must be on q's device {q.device}, got {attn_bias.device}")
    shape = (1,) * (4 - attn_bias.dim()) + tuple(attn_bias.shape)
    if attn_bias.dim() > 4 or any(n not in (1, want) for n, want in zip(shape, target)):
        raise ValueError(f"attn_bias must broadcast to (batch, num_heads, seqlen_q, seqlen_k) = {target}, "
                         f"got shape {tuple(attn_bias.shape)}")
    return attn_bias.reshape(shape)


def check_descales(q_descale, k_descale, v_descale, q: torch.Tensor, batch: int, num_heads_kv: int):
    """FP8 descale factors (FlashAttention-3's convention: true value = fp8 value x descale), float32
    (batch, num_heads_k) each, None meaning 1.  Returns None for non-FP8 inputs, else one float32
    (3, batch, num_heads_k) tensor (q's, k's and v's factors) for the kernels, detached: FP8 is forward only,
    on every path (the CPU path's dequantisation would otherwise carry a gradient to the descales)."""
    given = {"q_descale": q_descale, "k_descale": k_descale, "v_descale": v_descale}
    if q.dtype != FP8_DTYPE:
        for name, t in given.items():
            if t is not None:
                raise ValueError(f"{name} applies to float8_e4m3fn inputs only; q has dtype {q.dtype}")
        return None
    if q_descale is None and k_descale is None and v_descale is None:
        return torch.ones(3, batch, num_heads_kv, dtype=torch.float32, device=q.device)
    planes = []
    for name, t in given.items():
        if t is None:
            planes.append(torch.ones(batch, num_heads_kv, dtype=torch.float32, device=q.device))
            continue
        require_tensor(name, t)
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
        if tuple(t.shape) != (batch, num_heads_kv):
            raise ValueError(f"{name} must have shape (batch, num_heads_k) = ({batch}, {num_heads_kv}), "
                             f"got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
        planes.append(t.detach())
    return torch.stack(planes).contiguous()


def check_sinks(sinks, q: torch.Tensor):
    """None, or float32 logits of shape (H,) on q's device, made contiguous."""
    if sinks is None:
        return None
    require_tensor("sinks", sinks)
    num_heads = q.shape[-2]
    if tuple(sinks.shape) != (num_heads,):
        raise ValueError(f"sinks must have shape ({num_heads},) (one logit per query head), got {tuple(sinks.shape)}")
    if sinks.dtype != torch.float32:
        raise TypeError(f"sinks must be float32, got {sinks.dtype}")
    if sinks.device != q.device:
        raise ValueError(f"sinks must be on q's device {q.device}, got {sinks.device}")
    return sinks.contiguous()


def check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
