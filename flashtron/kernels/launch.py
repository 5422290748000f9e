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

from flashtron.kernels import configs, interpreter
from flashtron.sinks import sink_gradient
from flashtron.kernels.dropout import dropout_mask_kernel
from flashtron.kernels.backward import (attention_backward_dkdv, attention_backward_dq,
                                        attention_backward_preprocess)
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
    return INTERPRET and dtype == torch.bfloat16


def _grid(num_blocks: int, batch_heads: int) -> tuple:
    programs = num_blocks * batch_heads
    if programs > _MAX_PROGRAMS:
        raise ValueError(f"problem too large: {programs} programs exceed the grid limit of {_MAX_PROGRAMS}")
    return (programs,)


def _bhsd_strides(t: torch.Tensor) -> tuple:
    """Batch, sequence and head strides of a (batch, seqlen, heads, headdim) tensor."""
    return t.stride(0), t.stride(1), t.stride(2)


def _alibi_args(alibi_slopes, q):
    """(pointer, batch stride) of the slopes; any pointer when absent (never read)."""
    if alibi_slopes is None:
        return q, 0
    return alibi_slopes, alibi_slopes.stride(0) if alibi_slopes.dim() == 2 else 0


def _variant_switches(window_left, window_right, softcap, alibi_slopes, dropout_p):
    return dict(HAS_LO=window_left >= 0, HAS_HI=window_right >= 0,
                SOFTCAP=softcap > 0, ALIBI=alibi_slopes is not None, DROPOUT=dropout_p > 0)


def forward(q, k, v, softmax_scale: float, window_left: int, window_right: int, softcap: float,
            alibi_slopes, sinks, dropout_p: float, dropout_seed, allow_tf32: bool):
    batch, seqlen_q, num_heads, head_dim = q.shape
    seqlen_k, num_heads_kv = k.shape[1], k.shape[2]
    out = _new_output(q.shape, q.dtype, q.device)
    lse = _new_output((batch, num_heads, seqlen_q), torch.float32, q.device)
    if out.numel() == 0:
        return out, lse
    block_d = _padded_head_dim(head_dim)
    cfg = configs.select("forward", q, block_d)
    num_m_blocks = triton.cdiv(seqlen_q, cfg.block_m)
    attention_forward_kernel[_grid(num_m_blocks, batch * num_heads)](
        q, k, v, out, lse,
        *_bhsd_strides(q), *_bhsd_strides(k), *_bhsd_strides(v), *_bhsd_strides(out),
        *_alibi_args(alibi_slopes, q), q if sinks is None else sinks,
        q if dropout_seed is None else dropout_seed, dropout_p,
        num_heads, num_heads // num_heads_kv, seqlen_q, seqlen_k, num_m_blocks,
        softmax_scale, softmax_scale * LOG2E, softcap, window_left, window_right,
        head_dim, BLOCK_D=block_d, EVEN_D=block_d == head_dim, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        **_variant_switches(window_left, window_right, softcap, alibi_slopes, dropout_p),
        FOLD_SCALE=softmax_scale > 0 and softcap == 0 and alibi_slopes is None, SINKS=sinks is not None,
        INPUT_PRECISION=_input_precision(q.dtype, allow_tf32), UPCAST=_upcast(q.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, lse


def backward(dout, q, k, v, out, lse, softmax_scale: float, window_left: int, window_right: int,
             softcap: float, alibi_slopes, sinks, dropout_p: float, dropout_seed, allow_tf32: bool):
    batch, seqlen_q, num_heads, head_dim = q.shape
    seqlen_k, num_heads_kv = k.shape[1], k.shape[2]
    dq = _new_output(q.shape, q.dtype, q.device)
    dk = _new_output(k.shape, k.dtype, k.device)
    dv = _new_output(v.shape, v.dtype, v.device)
    if (dq.numel() == 0 and dk.numel() == 0) or seqlen_q == 0:
        # No query rows (or nothing at all): every gradient is zero or empty.
        dsinks = lse.new_empty(0) if sinks is None else torch.zeros_like(sinks)
        return dq, dk.zero_(), dv.zero_(), dsinks
    block_d = _padded_head_dim(head_dim)
    group = num_heads // num_heads_kv
    precision = _input_precision(q.dtype, allow_tf32)
    common = dict(head_dim=head_dim, BLOCK_D=block_d, EVEN_D=block_d == head_dim,
                  **_variant_switches(window_left, window_right, softcap, alibi_slopes, dropout_p),
                  INPUT_PRECISION=precision, UPCAST=_upcast(q.dtype))
    extras = (*_alibi_args(alibi_slopes, q), q if dropout_seed is None else dropout_seed, dropout_p)

    delta = _new_output(lse.shape, torch.float32, lse.device)
    pre_block_m = 64
    num_pre_blocks = triton.cdiv(seqlen_q, pre_block_m)
    attention_backward_preprocess[_grid(num_pre_blocks, batch * num_heads)](
        out, dout, delta, *_bhsd_strides(out), *_bhsd_strides(dout),
        num_heads, seqlen_q, num_pre_blocks, head_dim, BLOCK_D=block_d, EVEN_D=block_d == head_dim,
        BLOCK_M=pre_block_m)

    if seqlen_k > 0:
        cfg = configs.select("dkdv", q, block_d)
        num_n_blocks = triton.cdiv(seqlen_k, cfg.block_n)
        attention_backward_dkdv[_grid(num_n_blocks, batch * num_heads_kv)](
            q, k, v, dout, lse, delta, dk, dv,
            *_bhsd_strides(q), *_bhsd_strides(k), *_bhsd_strides(v), *_bhsd_strides(dout),
            *_bhsd_strides(dk), *_bhsd_strides(dv), *extras,
            num_heads, num_heads_kv, group, seqlen_q, seqlen_k, num_n_blocks,
            softmax_scale, softmax_scale * LOG2E, softcap, window_left, window_right,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **common,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    cfg = configs.select("dq", q, block_d)
    num_m_blocks = triton.cdiv(seqlen_q, cfg.block_m)
    attention_backward_dq[_grid(num_m_blocks, batch * num_heads)](
        q, k, v, dout, lse, delta, dq,
        *_bhsd_strides(q), *_bhsd_strides(k), *_bhsd_strides(v), *_bhsd_strides(dout), *_bhsd_strides(dq),
        *extras, num_heads, group, seqlen_q, seqlen_k, num_m_blocks,
        softmax_scale, softmax_scale * LOG2E, softcap, window_left, window_right,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, **common,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return dq, dk, dv, sink_gradient(sinks, lse, delta)


def dropout_keep_mask(dropout_seed, batch, num_heads, seqlen_q, seqlen_k, dropout_p):
    """The keep mask the kernels draw, materialised as bool (B, H, Sq, Sk): for return_attn_probs."""
    keep = torch.empty((batch, num_heads, seqlen_q, seqlen_k), dtype=torch.int8, device=dropout_seed.device)
    if keep.numel() == 0:
        return keep.bool()
    block_m, block_n = 32, 32
    num_m_blocks, num_n_blocks = triton.cdiv(seqlen_q, block_m), triton.cdiv(seqlen_k, block_n)
    dropout_mask_kernel[_grid(num_m_blocks * num_n_blocks, batch * num_heads)](
        dropout_seed, keep, seqlen_q, seqlen_k, num_m_blocks, num_n_blocks, dropout_p,
        BLOCK_M=block_m, BLOCK_N=block_n)
    return keep.bool()
