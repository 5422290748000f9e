"""xFormers' memory_efficient_attention and memory_efficient_attention_partial on flashtron.

Layouts are xFormers': [B, M, H, K]; [B, M, K] is one head; [B, M, G, H, K] is G groups of H query
heads.  This module brings them to flash layout (B, M, heads, K), asks `flashtron.xformers.dispatch`
for the flash-attn call that expresses the bias, runs it through flashtron's public functions
(which own validation, autograd and the kernels), and puts the results back into xFormers' layout.
Grouped-query attention written the xFormers way (key/value expanded along H with stride 0) runs as
flashtron GQA on the unexpanded heads, without a copy.

LSE convention of the partial form: natural log, -inf for a query that sees no key (xFormers';
flashtron's own functions use +inf there, flash-attn's marker).
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

import flashtron
from flashtron import validation
from flashtron.xformers import attn_bias as xb
from flashtron.xformers import dispatch


@dataclass
class _Layout:
    """How the caller's tensors map to flash layout, to put outputs back."""

    ndim: int
    groups: Optional[Tuple[int, int]] = None  # (G, H) of 5-D inputs

    def out(self, out: torch.Tensor) -> torch.Tensor:
        if self.ndim == 3:
            return out[:, :, 0]
        if self.ndim == 5:
            return out.unflatten(2, self.groups)
        return out

    def lse(self, lse: torch.Tensor) -> torch.Tensor:
        """(B, heads, M) -> [B, H, M], [B, G, H, M] for 5-D, [B, 1, M] for 3-D (as xFormers)."""
        return lse.unflatten(1, self.groups) if self.ndim == 5 else lse


def _shares_heads(t: torch.Tensor, dim: int) -> bool:
    """Whether every head along `dim` is one stored head (an expand), so one copy can stand for all.

    Not for a leaf that requires grad: its gradient must keep one entry per head."""
    return (t.shape[dim] == 1 or t.stride(dim) == 0) and not (t.is_leaf and t.requires_grad)


def _flash_layout(query, key, value) -> Tuple[_Layout, torch.Tensor, torch.Tensor, torch.Tensor]:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if query.ndim not in (3, 4, 5) or key.ndim != query.ndim or value.ndim != query.ndim:
        raise ValueError(f"query, key and value must all be [B, M, K], [B, M, H, K] or [B, M, G, H, K]; got "
                         f"shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if value.shape[-1] != query.shape[-1]:
        raise NotImplementedError(f"value's last dimension ({value.shape[-1]}) differs from query's "
                                  f"({query.shape[-1]}); flashtron needs one head dim for query, key and value")
    if query.ndim == 3:
        return _Layout(3), query.unsqueeze(2), key.unsqueeze(2), value.unsqueeze(2)
    if query.ndim == 4:
        if key.shape[2] != query.shape[2] or value.shape[2] != query.shape[2]:
            raise ValueError(f"[B, M, H, K] inputs need key and value with query's H = {query.shape[2]} (expand them "
                             f"along H for multi-query attention, or use [B, M, G, H, K] for grouped-query); got key "
                             f"{tuple(key.shape)}, value {tuple(value.shape)}")
        if _shares_heads(key, 2) and _shares_heads(value, 2) and key.shape[2] > 1:
            key, value = key[:, :, :1], value[:, :, :1]  # MQA written as an expand
        return _Layout(4), query, key, value
    groups = tuple(query.shape[2:4])
    if tuple(key.shape[2:4]) != groups or tuple(value.shape[:4]) != tuple(key.shape[:4]):
        raise ValueError(f"5-D inputs need key and value of shape [B, Mkv, G, H, K] with query's G, H = {groups} "
                         f"(expand them along H for grouped-query attention); got key {tuple(key.shape)}, "
                         f"value {tuple(value.shape)}")
    if _shares_heads(key, 3) and _shares_heads(value, 3):
        # GQA: the H query heads of group g share kv head g, which is flashtron's grouping of
        # query head g * H + h onto kv head (g * H + h) // H.
        key, value = key[:, :, :, 0], value[:, :, :, 0]
        if _shares_heads(key, 2) and _shares_heads(value, 2):
            key, value = key[:, :, :1], value[:, :, :1]
    else:
        key, value = key.flatten(2, 3), value.flatten(2, 3)
    return _Layout(5, groups), query.flatten(2, 3), key, value


def _dense_bias(bias: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """A tensor bias broadcastable to [B, H, Mq, Mk] ([B, Mq, Mk] for 3-D inputs, [B, G, H, Mq, Mk]
    for 5-D) as (B|1, heads|1, Mq|1, Mk|1) over the flash layout's heads."""
    target = tuple(query.shape[:1]) + tuple(query.shape[2:-1]) + (query.shape[1], key.shape[1])
    try:
        fits = torch.broadcast_shapes(tuple(bias.shape), target) == target
    except RuntimeError:
        fits = False
    if not fits:
        names = {3: "[B, Mq, Mkv]", 4: "[B, H, Mq, Mkv]", 5: "[B, G, H, Mq, Mkv]"}[query.ndim]
        raise ValueError(f"the attention bias tensor has shape {tuple(bias.shape)}; it must broadcast to "
                         f"{names} = {list(target)} for query {tuple(query.shape)} and key {tuple(key.shape)}")
    bias = bias.reshape((1,) * (len(target) - bias.ndim) + tuple(bias.shape))
    if query.ndim == 3:
        return bias.unsqueeze(1)
    if query.ndim == 5:
        if bias.shape[1] * bias.shape[2] != 1:
            bias = bias.expand(bias.shape[0], *target[1:3], *bias.shape[3:])
        return bias.flatten(1, 2)
    return bias


@dataclass
class _Call:
    """One attention in flash layout: tensors, the plan for the bias, and the caller's layout."""

    layout: _Layout
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    plan: dispatch.Plan

    def attend(self, q, k, v, dropout_p: float, scale: Optional[float], return_lse: bool):
        """flash-attn on (q, k, v) under this call's masks: out (B, Mq, heads, K) and, with
        return_lse, flashtron's lse (B, heads, Mq) (+inf where a query sees no key)."""
        plan = self.plan
        window = dict(window_size=plan.window_size, dropout_p=dropout_p, softmax_scale=scale,
                      return_attn_probs=return_lse)
        if plan.varlen is None:
            if plan.num_keys is not None:
                k, v = k[:, :plan.num_keys], v[:, :plan.num_keys]
            if plan.tensor_bias is not None:
                window["attn_bias"] = plan.tensor_bias
            result = flashtron.flash_attn_func(q, k, v, **window)
            return (result[0], result[1]) if return_lse else result
        seq = plan.varlen
        k, v = k[0], v[0]
        if seq.page_size is not None:
            k, v = k.unflatten(0, (-1, seq.page_size)), v.unflatten(0, (-1, seq.page_size))
        extra = {"seqused_k": seq.seqused_k} if seq.seqused_k is not None else {}
        if seq.block_table is not None:
            extra["block_table"] = seq.block_table
        result = flashtron.flash_attn_varlen_func(q[0], k, v, seq.cu_seqlens_q, seq.cu_seqlens_k, seq.max_seqlen_q,
                                                  seq.max_seqlen_k, **window, **extra)
        if not return_lse:
            return result.unsqueeze(0)
        return result[0].unsqueeze(0), result[1].unsqueeze(0)  # lse (heads, total_q) -> (1, heads, total_q)


def _prepare(query, key, value, attn_bias) -> _Call:
    layout, q, k, v = _flash_layout(query, key, value)
    tensor_bias = None
    if isinstance(attn_bias, xb.LowerTriangularMaskWithTensorBias):
        tensor_bias = _dense_bias(attn_bias._subtensor, query, key)
    elif isinstance(attn_bias, torch.Tensor):
        tensor_bias = _dense_bias(attn_bias, query, key)
    return _Call(layout, q, k, v, dispatch.plan(attn_bias, q, k, tensor_bias))


def memory_efficient_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_bias=None,
                               p: float = 0.0, scale: Optional[float] = None, *, op=None,
                               output_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """softmax(query key^T * scale + attn_bias) value, with dropout p, in xFormers' layouts.

    query [B, Mq, H, K] (or [B, Mq, K], or [B, Mq, G, H, K]); key, value [B, Mkv, ...] alike, value's
    last dim equal to K (else NotImplementedError).  attn_bias: None, a tensor broadcastable to
    [B, H, Mq, Mkv], or an `AttentionBias` from `flashtron.xformers.attn_bias`; block-diagonal biases
    need B == 1.  scale defaults to K ** -0.5.  op is accepted and ignored (one backend).  Returns
    [B, Mq, H, K] in query's dtype, or output_dtype.  Differentiable in query, key, value (and a
    tensor bias).
    """
    validation.check_dropout(p, name="p")  # here, for messages in xFormers' names
    validation.softmax_scale_or_default(scale, 1, name="scale")
    call = _prepare(query, key, value, attn_bias)
    out = call.layout.out(call.attend(call.q, call.k, call.v, p, scale, return_lse=False))
    return out if output_dtype is None else out.to(output_dtype)


class _LogSumExpGradient(torch.autograd.Function):
    """Identity on the lse, whose backward gives the lse's own gradient to q and k.

    flashtron's lse output is not differentiable.  For row i, lse_i = log sum_j exp(scale q_i.k_j
    + mask_ij), so d lse_i / d q_i = scale (P K)_i and d lse_i / d k_j = scale P_ij q_i, with P the
    attention probabilities.  Both come from one attention over the same masks with the keys as
    values: its output is P K, and its value gradient for the upstream scale g_i q_i is
    sum_i P_ij scale g_i q_i.  Merged partial attentions need this term to be exact.
    """

    @staticmethod
    def forward(ctx, lse, q, k, call, scale):
        ctx.call, ctx.scale = call, scale
        ctx.save_for_backward(q, k, lse)
        return lse.clone()

    @staticmethod
    def backward(ctx, grad_lse):
        q, k, lse = ctx.saved_tensors
        # Rows that see no key have no probabilities; their gradient is 0.
        weight = torch.where(torch.isfinite(lse), grad_lse * ctx.scale, 0.0)
        weight = weight.transpose(1, 2).unsqueeze(-1)  # (B, heads, M) -> (B, M, heads, 1)
        with torch.enable_grad():
            keys_as_values = k.detach().requires_grad_()
            weighted_keys = ctx.call.attend(q.detach(), k.detach(), keys_as_values, 0.0, ctx.scale, False)
        grad_q = (weight * weighted_keys.float()).to(q.dtype) if ctx.needs_input_grad[1] else None
        grad_k = None
        if ctx.needs_input_grad[2]:
            (grad_k,) = torch.autograd.grad(weighted_keys, keys_as_values, (weight * q.float()).to(q.dtype))
        return None, grad_q, grad_k, None, None


def memory_efficient_attention_partial(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                       attn_bias=None, p: float = 0.0, scale: Optional[float] = None, *, op=None,
                                       output_dtype: Optional[torch.dtype] = None
                                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of attention over one part of the keys, for `merge_attentions`.

    Arguments as `memory_efficient_attention`, without dropout or tensor biases (as xFormers).
    out is float32 unless output_dtype says otherwise; lse is float32 [B, H, Mq] ([B, G, H, Mq] for
    5-D inputs, [1, H, total_q] for block-diagonal biases), natural log, -inf where a query sees no
    key.  Both are differentiable, the lse included, so merged partials train exactly.
    """
    validation.check_dropout(p, name="p")
    validation.softmax_scale_or_default(scale, 1, name="scale")
    if p != 0.0:
        raise NotImplementedError(f"memory_efficient_attention_partial does not support dropout (got p={p}): "
                                  "dropout of the parts would not compose into dropout of the merged attention")
    if isinstance(attn_bias, (torch.Tensor, xb.LowerTriangularMaskWithTensorBias)):
        raise ValueError(f"memory_efficient_attention_partial does not take a tensor bias "
                         f"({type(attn_bias).__name__}), as in xFormers; use memory_efficient_attention")
    call = _prepare(query, key, value, attn_bias)
    out, lse = call.attend(call.q, call.k, call.v, 0.0, scale, return_lse=True)
    if torch.is_grad_enabled() and (call.q.requires_grad or call.k.requires_grad):
        softmax_scale = call.q.shape[-1] ** -0.5 if scale is None else scale
        lse = _LogSumExpGradient.apply(lse, call.q, call.k, call, softmax_scale)
    lse = torch.where(torch.isposinf(lse), -math.inf, lse)
    out = call.layout.out(out).to(output_dtype or torch.float32)
    return out, call.layout.lse(lse)
