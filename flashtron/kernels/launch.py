"""Launcher: turns normalised arguments into grids, configs and kernel calls.

Inputs arrive already validated by `flashtron.interface` (same dtype and
device, unit stride on the head dim, window already in (left, right) form with
-1 for unbounded).  Each function allocates its outputs and launches; nothing
here re-checks user input.  Grids are flat (1-D), so batch * heads may exceed
the 65535 limit of the other grid axes.
"""

import os

import torch
import triton

from flashtron.kernels import (configs, hardware, hopper_backward, hopper_decode, hopper_forward, interpreter, paged_kv,
                               tma, transpose)
from flashtron.sinks import sink_gradient
from flashtron.kernels.dropout import dropout_mask_kernel
from flashtron.kernels.backward import (PREPROCESS_ROWS, attention_backward_dkdv, attention_backward_dq,
                                        attention_backward_preprocess)
from flashtron.kernels.combine import combine_splits_kernel
from flashtron.kernels.forward import attention_forward_kernel

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Debugging aid used by the tests: outputs start as NaN, so an element a kernel
# forgot to write cannot pass for a correct one.
POISON_OUTPUTS = os.environ.get("FLASHTRON_POISON_OUTPUTS", "0") not in ("", "0")
_MAX_PROGRAMS = 2**31 - 1


def _new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


if INTERPRET:
    interpreter.install()


def _padded_head_dim(head_dim: int) -> int:
    # tl.dot needs K >= 16 and power-of-two tiles; padding is masked on load and store.
    return max(16, triton.next_power_of_2(head_dim))


def _input_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    return "tf32" if dtype != torch.float32 or allow_tf32 else "ieee"


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRET and dtype in (torch.bfloat16, torch.float8_e4m3fn)


def _grid(num_blocks: int, batch_heads: int) -> tuple:
    programs = num_blocks * batch_heads
    if programs > _MAX_PROGRAMS:
        raise ValueError(f"problem too large: {programs} programs exceed the grid limit of {_MAX_PROGRAMS}")
    return (programs,)


class _Layout:
    """How sequences sit in q (or k): dense (batch, seqlen, heads, headdim), or packed
    (total, heads, headdim) with cu_seqlens, either one optionally cut short by seqused."""

    def __init__(self, t: torch.Tensor, cu_seqlens, seqused, max_seqlen: int):
        self.varlen = cu_seqlens is not None
        self.cu_seqlens = cu_seqlens
        self.seqused = seqused
        if self.varlen:
            self.batch = cu_seqlens.shape[0] - 1
            self.max_seqlen = max_seqlen
        else:
            self.batch = t.shape[0]
            self.max_seqlen = t.shape[1]

    def strides(self, t: torch.Tensor) -> tuple:
        """Batch, row and head strides of t (batch stride 0 when packed)."""
        if self.varlen:
            return 0, t.stride(0), t.stride(1)
        return t.stride(0), t.stride(1), t.stride(2)

    def row_stat_strides(self, num_heads: int, rows: int) -> tuple:
        """Batch and head strides of softmax_lse: (B, H, Sq), or (H, total_q) when packed."""
        return (0, rows) if self.varlen else (num_heads * rows, rows)

    def pointers(self, fallback: torch.Tensor) -> tuple:
        """(cu_seqlens, seqused) pointers; any tensor where absent (never read)."""
        return (fallback if self.cu_seqlens is None else self.cu_seqlens,
                fallback if self.seqused is None else self.seqused)


def _alibi_args(alibi_slopes, q):
    """(pointer, batch stride) of the slopes; any pointer when absent (never read)."""
    if alibi_slopes is None:
        return q, 0
    return alibi_slopes, alibi_slopes.stride(0) if alibi_slopes.dim() == 2 else 0


def _bias_args(attn_bias, q):
    """(pointer, batch, head, row and column strides) of a 4-D bias, stride 0 along its size-1
    (broadcast) dims; any pointer when absent (never read)."""
    if attn_bias is None:
        return q, 0, 0, 0, 0
    return (attn_bias, *(stride if size > 1 else 0 for size, stride in zip(attn_bias.shape, attn_bias.stride())))


def _variant_switches(window_left, window_right, softcap, alibi_slopes, dropout_p):
    return dict(HAS_LO=window_left >= 0, HAS_HI=window_right >= 0,
                SOFTCAP=softcap > 0, ALIBI=alibi_slopes is not None, DROPOUT=dropout_p > 0)


def _layout_args(q, k, lse, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k):
    """The two layouts, and the kernel arguments and switches they share."""
    q_layout = _Layout(q, cu_seqlens_q, seqused_q, max_seqlen_q)
    k_layout = _Layout(k, cu_seqlens_k, seqused_k, max_seqlen_k)
    cu_seqlens_q_arg, seqused_q_arg = q_layout.pointers(q)
    cu_seqlens_k_arg, seqused_k_arg = k_layout.pointers(q)
    # In the kernels' order: stride_lse_b, stride_lse_h, CuSeqlensQ, CuSeqlensK, SeqUsedQ, SeqUsedK.
    args = (*q_layout.row_stat_strides(q.shape[-2], lse.shape[-1]),
            cu_seqlens_q_arg, cu_seqlens_k_arg, seqused_q_arg, seqused_k_arg)
    switches = dict(VARLEN=q_layout.varlen, SEQUSED_Q=seqused_q is not None, SEQUSED_K=seqused_k is not None)
    return q_layout, k_layout, args, switches


def forward(q, k, v, softmax_scale: float, window_left: int, window_right: int, softcap: float,
            alibi_slopes, sinks, dropout_p: float, dropout_seed, allow_tf32: bool,
            cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
            max_seqlen_q: int = -1, max_seqlen_k: int = -1, attn_bias=None, block_table=None,
            cache_batch_idx=None, cache_leftpad=None, num_splits: int = 1, pack_gqa: bool = False, descale=None):
    """Dense or variable-length attention; block_table (paged k and v as (pages, page_size, Hk, D)),
    cache_batch_idx (k's batch row of each query row), cache_leftpad (keys before it are padding)
    and num_splits > 1 (split-KV, dense q only) serve KV-cache decoding.  descale (float32 (3, B, Hk)):
    q, k, v are float8_e4m3fn and out is bfloat16."""
    num_heads, head_dim = q.shape[-2], q.shape[-1]
    num_heads_kv = k.shape[-2]
    varlen = cu_seqlens_q is not None
    paged = block_table is not None
    fp8 = descale is not None
    out = _new_output(q.shape, torch.bfloat16 if fp8 else q.dtype, q.device)
    lse = _new_output((num_heads, q.shape[0]) if varlen else (q.shape[0], num_heads, q.shape[1]),
                      torch.float32, q.device)
    # Dense, or variable-length without seqused: the layouts the Hopper kernels take.
    plain = not (paged or pack_gqa or num_splits != 1 or attn_bias is not None or cache_batch_idx is not None
                 or cache_leftpad is not None or seqused_q is not None or seqused_k is not None or k.numel() == 0)
    # The Hopper kernel's calls first: a short kernel runs for less time than the lines below take on the host.
    if plain and out.numel() > 0:
        hopper = _hopper_operands((q, k, v, out), cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        if hopper_forward.unsupported_reason(*hopper[0][:3], softmax_scale, window_left, window_right, softcap,
                                             alibi_slopes, sinks, dropout_p, plain, hopper[1]) is None:
            hopper_forward.forward(*hopper[0], lse, softmax_scale, window_left, window_right, hopper[2], descale)
            return out, lse
    if seqused_q is not None:
        # Rows past a sequence's used length are not computed: they read as "saw nothing".
        out.zero_()
        lse.fill_(float("inf"))
    q_layout, k_layout, layout_args, layout_switches = _layout_args(
        q, k, lse, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k)
    if paged and not varlen:
        k_layout.max_seqlen = block_table.shape[1] * k.shape[1]
    if out.numel() == 0 or q_layout.batch == 0 or q_layout.max_seqlen == 0:
        return out, lse
    # A paged k or v is (pages, page_size, heads, headdim): its "batch" stride is the page stride.
    k_strides = (k.stride(0), k.stride(1), k.stride(2)) if paged else k_layout.strides(k)
    if fp8:
        # fp8 tensor cores read both operands of P @ V with the reduction (key) dim contiguous: v is
        # copied keys-innermost once, and viewed back in its own shape (head-dim stride = keys).
        # (A packed batch's v is (total, Hk, D): one batch entry.)
        rows, keys, heads_kv, dim = (v if v.dim() == 4 else v[None]).shape
        vt = transpose.keys_innermost(v.view(rows, keys, heads_kv, dim),
                                      _new_output((rows, heads_kv * dim, keys), v.dtype, v.device))
        v = vt.view(rows, heads_kv, dim, keys).permute(0, 3, 1, 2).view(v.shape)
    v_strides = (v.stride(0), v.stride(1), v.stride(2)) if paged else k_layout.strides(v)
    block_d = _padded_head_dim(head_dim)
    group = num_heads // num_heads_kv
    # Packed GQA (decoding): a power-of-two group's heads share one tile and one read of the keys.
    pack = (pack_gqa and not varlen and 1 < group <= 64 and group & (group - 1) == 0 and attn_bias is None
            and dropout_p == 0)
    if pack and seqused_k is not None and hopper_decode.unsupported_reason(
            q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, block_table) is None:
        num_splits = _num_splits(num_splits, q_layout.batch * num_heads_kv,
                                 triton.cdiv(k_layout.max_seqlen, hopper_decode.BLOCK_N), q.device, 1)
        target_out, target_lse = _split_workspace(num_splits, out, lse)
        hopper_decode.decode(q, k, v, target_out, target_lse, seqused_k, block_table, softmax_scale,
                             window_right == 0, num_splits)
        if num_splits > 1:
            _combine_splits(target_out, target_lse, out, lse)
        return out, lse
    if pack:
        cfg = configs.select_decode(q, block_d, q_layout.max_seqlen * group, paged)
    else:
        cfg = configs.select("forward", q, block_d, dropout=dropout_p > 0)
    rows_per_token = group if pack else 1
    num_m_blocks = triton.cdiv(q_layout.max_seqlen, cfg.block_m // rows_per_token)
    if num_splits != 1:
        num_splits = _num_splits(num_splits, num_m_blocks * q_layout.batch * num_heads // rows_per_token,
                                 triton.cdiv(k_layout.max_seqlen, cfg.block_n), q.device, 2 if paged else 1)
    target_out, target_lse = _split_workspace(num_splits, out, lse)
    if num_splits > 1:
        out_strides = target_out.stride()[1:4]
        lse_strides = target_lse.stride()[1:3]
        split_strides = (target_out.stride(0), target_lse.stride(0))
    else:
        out_strides, lse_strides, split_strides = q_layout.strides(out), layout_args[:2], (0, 0)
    # TMA boxes for K and V (not for paged caches, whose tiles gather rows from several pages, nor fp8).
    k_tiles, v_tiles, use_tma = tma.operand_pair(k, v, k_layout.varlen, cfg.block_n, block_d,
                                                 cfg.tma and not paged and not fp8, INTERPRET)
    cache_args = (q if cache_leftpad is None else cache_leftpad, q if cache_batch_idx is None else cache_batch_idx,
                  q if block_table is None else block_table, 0 if block_table is None else block_table.stride(0),
                  k.shape[1] if paged else 1, num_splits, *split_strides)
    attention_forward_kernel[_grid(num_m_blocks * num_splits, q_layout.batch * num_heads // rows_per_token)](
        q, k, v, k_tiles, v_tiles, target_out, target_lse,
        *q_layout.strides(q), *k_strides, *v_strides, v.stride(-1), *out_strides,
        *lse_strides, *layout_args[2:], *_alibi_args(alibi_slopes, q), q if sinks is None else sinks,
        q if dropout_seed is None else dropout_seed, dropout_p, *_bias_args(attn_bias, q), *cache_args,
        q if descale is None else descale, 0 if descale is None else descale.stride(0),
        num_heads, group, q_layout.max_seqlen, k_layout.max_seqlen, num_m_blocks,
        softmax_scale, softmax_scale * LOG2E, softcap, window_left, window_right,
        head_dim, BLOCK_D=block_d, EVEN_D=block_d == head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        **layout_switches, **_variant_switches(window_left, window_right, softcap, alibi_slopes, dropout_p),
        # Folding the scale into the row max needs a positive scale; FP8's descales multiply it in-kernel.
        FOLD_SCALE=softmax_scale > 0 and softcap == 0 and alibi_slopes is None and attn_bias is None and not fp8,
        SINKS=sinks is not None, BIAS=attn_bias is not None, LEFTPAD=cache_leftpad is not None,
        KV_BATCH_IDX=cache_batch_idx is not None, PAGED=paged,
        PAGE_CHUNK=paged_kv.PAGE_CHUNK_INTERPRETER if INTERPRET else paged_kv.PAGE_CHUNK,
        SPLIT=num_splits > 1, PACK_GQA=rows_per_token,
        FP8=fp8, TMA=use_tma, INPUT_PRECISION=_input_precision(q.dtype, allow_tf32), UPCAST=_upcast(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if num_splits > 1:
        _combine_splits(target_out, target_lse, out, lse)
    return out, lse


def _hopper_operands(tensors, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int) -> tuple:
    """The Hopper kernels' view of a call: (tensors as (B, S, H, D), their seqlens argument, their varlen
    argument).  Packed variable-length tensors (total, H, D) become one batch entry (1, total, H, D)."""
    if cu_seqlens_q is None:
        return tensors, None, None
    return (tuple(t[None] for t in tensors), (max_seqlen_q, max_seqlen_k),
            (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))


def _split_workspace(num_splits: int, out, lse) -> tuple:
    """Where a split-KV forward writes: float32 partials (num_splits, *out.shape) and (num_splits,
    *lse.shape), merged by combine_splits_kernel; out and lse themselves without splits."""
    if num_splits == 1:
        return out, lse
    return (torch.empty((num_splits, *out.shape), dtype=torch.float32, device=out.device),
            torch.empty((num_splits, *lse.shape), dtype=torch.float32, device=out.device))


def _num_splits(requested: int, programs: int, key_blocks: int, device, programs_per_sm: int) -> int:
    """How many programs share each tile's keys: `requested` when > 0, else enough to bring the grid to
    programs_per_sm programs per SM, each split keeping >= 4 key blocks.  Measured on an H200
    (BENCHMARKS.md): a contiguous decode tile of forward.py, and any tile of hopper_decode, pipelines deep
    enough to own its SM, so a second wave only queues behind the first (1 per SM); forward.py's paged
    tiles wait on their page lookups, and a second resident program per SM hides that (2)."""
    if requested > 0:
        return max(1, min(requested, key_blocks))
    target = _sm_count(device) * programs_per_sm
    if programs >= target:
        return 1
    return max(1, min(target // programs, key_blocks // 4, 128))


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 8  # the interpreter: small, so that splitting is exercised
    return hardware.sm_count(device)


def _combine_splits(out_accum, lse_accum, out, lse):
    """Merge split partials (S, B, Sq, H, D) and (S, B, H, Sq) into out and lse (dense q)."""
    num_splits, batch, seqlen_q, num_heads, head_dim = out_accum.shape
    combine_splits_kernel[(batch * seqlen_q * num_heads,)](
        out_accum, lse_accum, out, lse, *out_accum.stride()[:4], *lse_accum.stride()[:3],
        *out.stride()[:3], *lse.stride()[:2], num_splits, num_heads, seqlen_q, head_dim,
        BLOCK_SPLITS=triton.next_power_of_2(num_splits), BLOCK_D=_padded_head_dim(head_dim),
        UPCAST=_upcast(out.dtype))


def backward(dout, q, k, v, out, lse, softmax_scale: float, window_left: int, window_right: int,
             softcap: float, alibi_slopes, sinks, dropout_p: float, dropout_seed, allow_tf32: bool,
             cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
             max_seqlen_q: int = -1, max_seqlen_k: int = -1, attn_bias=None, bias_requires_grad: bool = False,
             deterministic: bool = False, grads=None):
    """dq, dk, dv, dsinks, dbias.  The Hopper kernel sums dQ with float32 atomics; deterministic=True (or any
    call it does not cover) takes the portable kernels, whose every output element is written by one
    program in a fixed order.  grads: (dq, dk, dv) to write into, of q's, k's and v's shapes and dtype with unit
    stride on the head dim, such as views of one packed tensor (their callers build them); else allocated."""
    num_heads, head_dim = q.shape[-2], q.shape[-1]
    num_heads_kv = k.shape[-2]
    dq, dk, dv = grads or (_new_output(t.shape, t.dtype, t.device) for t in (q, k, v))
    # The bias gradient is written per (batch, head, query, key) in float32, then summed over the
    # dims the bias broadcasts along; pairs no program visits (outside the band) stay 0.
    dbias_full = (torch.zeros((q.shape[0], num_heads, q.shape[1], k.shape[1]), dtype=torch.float32,
                              device=q.device) if bias_requires_grad else None)
    # Delta has softmax_lse's layout; rows past a used length keep delta 0 (sink_gradient reads them).
    delta = torch.zeros_like(lse) if seqused_q is not None else _new_output(lse.shape, torch.float32, lse.device)
    if seqused_q is not None:
        dq.zero_()
    if seqused_k is not None:
        dk.zero_()
        dv.zero_()
    # No query rows (or nothing at all): a packed batch of no sequence or of empty ones, or an empty dense q.
    empty = dq.numel() == 0 or (cu_seqlens_q is not None and (cu_seqlens_q.shape[0] < 2 or max_seqlen_q == 0))
    # The Hopper kernel's calls first, as in `forward`; empty ones are left to the lines below.
    plain = not (seqused_q is not None or seqused_k is not None or attn_bias is not None or k.numel() == 0
                 or deterministic)
    if plain and not empty:
        hopper = _hopper_operands((dout, q, k, v, out, dq, dk, dv), cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k)
        if hopper_backward.unsupported_reason(*hopper[0][:4], softmax_scale, window_left, window_right, softcap,
                                              alibi_slopes, sinks, dropout_p, plain, hopper[1],
                                              grads=hopper[0][5:] if grads else ()) is None:
            hopper_backward.backward(*hopper[0][:5], lse, delta, *hopper[0][5:], softmax_scale, window_left,
                                     window_right, hopper[2])
            return dq, dk, dv, sink_gradient(sinks, lse, delta), _bias_gradient(None, attn_bias, lse)
    q_layout, k_layout, layout_args, layout_switches = _layout_args(
        q, k, lse, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k)
    if empty:  # every gradient is zero or empty
        dsinks = lse.new_empty(0) if sinks is None else torch.zeros_like(sinks)
        return dq.zero_(), dk.zero_(), dv.zero_(), dsinks, _bias_gradient(dbias_full, attn_bias, lse)

    block_d = _padded_head_dim(head_dim)
    num_pre_blocks = triton.cdiv(q_layout.max_seqlen, PREPROCESS_ROWS)
    cu_seqlens_q_arg, seqused_q_arg = q_layout.pointers(q)
    attention_backward_preprocess[_grid(num_pre_blocks, q_layout.batch * num_heads)](
        out, dout, delta, *q_layout.strides(out), *q_layout.strides(dout), *layout_args[:2],
        cu_seqlens_q_arg, seqused_q_arg, num_heads, q_layout.max_seqlen, num_pre_blocks, head_dim,
        delta, 0, 0, 0, delta, BLOCK_D=block_d, EVEN_D=block_d == head_dim, BLOCK_M=PREPROCESS_ROWS,
        VARLEN=layout_switches["VARLEN"], SEQUSED_Q=layout_switches["SEQUSED_Q"], ZERO_DQ=False)

    group = num_heads // num_heads_kv
    common = dict(head_dim=head_dim, BLOCK_D=block_d, EVEN_D=block_d == head_dim, **layout_switches,
                  **_variant_switches(window_left, window_right, softcap, alibi_slopes, dropout_p),
                  BIAS=attn_bias is not None, INPUT_PRECISION=_input_precision(q.dtype, allow_tf32),
                  UPCAST=_upcast(q.dtype))
    extras = (*layout_args, *_alibi_args(alibi_slopes, q), q if dropout_seed is None else dropout_seed, dropout_p,
              *_bias_args(attn_bias, q))

    if k_layout.max_seqlen > 0:
        cfg = configs.select("dkdv", q, block_d, dropout=dropout_p > 0)
        num_n_blocks = triton.cdiv(k_layout.max_seqlen, cfg.block_n)
        q_tiles, do_tiles, use_tma = tma.operand_pair(q, dout, q_layout.varlen, cfg.block_m, block_d, cfg.tma,
                                                      INTERPRET)
        attention_backward_dkdv[_grid(num_n_blocks, q_layout.batch * num_heads_kv)](
            q, k, v, dout, q_tiles, do_tiles, lse, delta, dk, dv,
            *q_layout.strides(q), *k_layout.strides(k), *k_layout.strides(v), *q_layout.strides(dout),
            *k_layout.strides(dk), *k_layout.strides(dv), *extras,
            *(_bias_args(dbias_full, q) if dbias_full is None else (dbias_full, *dbias_full.stride())),
            num_heads, num_heads_kv, group, q_layout.max_seqlen, k_layout.max_seqlen, num_n_blocks,
            softmax_scale, softmax_scale * LOG2E, softcap, window_left, window_right,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BIAS_GRAD=dbias_full is not None, TMA=use_tma, **common,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    elif dk.numel() > 0:
        dk.zero_()
        dv.zero_()

    cfg = configs.select("dq", q, block_d, dropout=dropout_p > 0)
    num_m_blocks = triton.cdiv(q_layout.max_seqlen, cfg.block_m)
    k_tiles, v_tiles, use_tma = tma.operand_pair(k, v, k_layout.varlen, cfg.block_n, block_d, cfg.tma, INTERPRET)
    attention_backward_dq[_grid(num_m_blocks, q_layout.batch * num_heads)](
        q, k, v, dout, k_tiles, v_tiles, lse, delta, dq,
        *q_layout.strides(q), *k_layout.strides(k), *k_layout.strides(v), *q_layout.strides(dout),
        *q_layout.strides(dq), *extras, num_heads, group, q_layout.max_seqlen, k_layout.max_seqlen, num_m_blocks,
        softmax_scale, softmax_scale * LOG2E, softcap, window_left, window_right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, TMA=use_tma, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dq, dk, dv, sink_gradient(sinks, lse, delta), _bias_gradient(dbias_full, attn_bias, lse)


def _bias_gradient(dbias_full, attn_bias, lse):
    """dbias_full (B, H, Sq, Sk) summed to attn_bias's shape and dtype; empty when not requested."""
    if dbias_full is None:
        return lse.new_empty(0)
    summed = [d for d in range(4) if attn_bias.shape[d] == 1 and dbias_full.shape[d] != 1]
    if summed:
        dbias_full = dbias_full.sum(summed, keepdim=True)
    return dbias_full.to(attn_bias.dtype)


def dropout_keep_mask(dropout_seed, batch, num_heads, seqlen_q, seqlen_k, dropout_p, first_batch: int = 0):
    """The keep mask the kernels draw, materialised as bool (B, H, Sq, Sk): for return_attn_probs.
    first_batch numbers the batch entries from there (sequence b of a variable-length batch)."""
    keep = torch.empty((batch, num_heads, seqlen_q, seqlen_k), dtype=torch.int8, device=dropout_seed.device)
    if keep.numel() == 0:
        return keep.bool()
    block_m, block_n = 32, 32
    num_m_blocks, num_n_blocks = triton.cdiv(seqlen_q, block_m), triton.cdiv(seqlen_k, block_n)
    dropout_mask_kernel[_grid(num_m_blocks * num_n_blocks, batch * num_heads)](
        dropout_seed, keep, seqlen_q, seqlen_k, num_m_blocks, num_n_blocks, dropout_p, first_batch * num_heads,
        BLOCK_M=block_m, BLOCK_N=block_n)
    return keep.bool()
