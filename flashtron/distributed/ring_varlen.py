"""Ring attention over a packed variable-length batch, every sequence split across the ranks.

ring-flash-attn's varlen layout: each sequence b of the global batch (its length a multiple of W)
is cut into W contiguous pieces, rank r holding piece r of every sequence, packed in batch order;
so every rank has the same local cu_seqlens (the global one divided by W).  The ring is the dense
one (`ring_pass`): the stacked local k, v travel around it, each step's keys meet the local
queries in the varlen kernel calls `varlen_plan` gives (every sequence at once; per band under a
sliding window), and the results merge through their log-sum-exp in float32 (`merge`, on the
packed rows as a batch of one).  The backward sends dk, dv around the ring with the blocks and
keeps dq local.  One call reads the local cu_seqlens on the host, in the collective that checks
the ranks agree, and plans from those values.
"""

import math

import torch

from flashtron import ops, validation
from flashtron.distributed import merge, ring_pass
from flashtron.distributed.comm import Ring, check_same_packed_batch, resolve_group
from flashtron.distributed.ring import RingParams, block_seed, new_base_seed, ring_params
from flashtron.distributed.varlen_plan import packed_calls


def _plan(ring: Ring, cu_values: list, cu_seqlens: torch.Tensor, params: RingParams) -> tuple:
    """(step, key rank, the step's PackedCalls) for every step, in ring order."""
    steps = []
    for step in range(ring.world_size):
        key_rank = (ring.rank - step) % ring.world_size
        steps.append((step, key_rank, packed_calls(ring.rank, key_rank, ring.world_size, cu_values, cu_seqlens,
                                                   params.window_left, params.window_right)))
    return tuple(steps)


def _layout(call):
    return dict(cu_seqlens_q=call.cu_seqlens_q, cu_seqlens_k=call.cu_seqlens_k, seqused_q=call.seqused_q,
                seqused_k=call.seqused_k, max_seqlen_q=call.max_seqlen_q, max_seqlen_k=call.max_seqlen_k)


def _ring_forward(ring: Ring, q, k, v, params: RingParams, base_seed, steps, calls_per_step: int):
    total, num_heads, head_dim = q.shape
    # The packed rows as a batch of one: out (1, total, H, D), lse (1, H, total).
    out, lse = merge.new_accumulators(1, total, num_heads, head_dim, q.device)

    def attend(key_value, key_rank, index, call):
        block_out, block_lse = ops.attention_forward(
            q, key_value[0], key_value[1], params.softmax_scale, call.window_left, call.window_right,
            params.softcap, None, None, params.dropout_p,
            block_seed(base_seed, ring, key_rank, index, calls_per_step), params.allow_tf32, **_layout(call))
        merge.merge_block(out, lse, block_out[None], block_lse[None])

    ring_pass.forward_pass(ring, torch.stack((k, v)), steps, attend)
    out, lse = merge.finish(out, lse, q.dtype)
    return out[0], lse[0]


def _ring_backward(ring: Ring, dout, q, k, v, out, lse, params: RingParams, base_seed, steps,
                   calls_per_step: int):
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)

    def differentiate(key_value, key_rank, index, call, block_gradient):
        block_dq, block_dk, block_dv, *_ = ops.attention_backward(
            dout, q, key_value[0], key_value[1], out, lse, params.softmax_scale, call.window_left,
            call.window_right, params.softcap, None, None, params.dropout_p,
            block_seed(base_seed, ring, key_rank, index, calls_per_step), params.allow_tf32,
            deterministic=params.deterministic, **_layout(call))
        dq.add_(block_dq)
        block_gradient[0].add_(block_dk)
        block_gradient[1].add_(block_dv)

    own_gradient = ring_pass.backward_pass(ring, torch.stack((k, v)), steps, differentiate)
    return dq.to(q.dtype), own_gradient[0].to(k.dtype), own_gradient[1].to(v.dtype)


class _RingVarlenAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, base_seed, params: RingParams, ring: Ring, steps, calls_per_step: int):
        if q.numel() == 0:
            # No tokens (or no heads) on any rank (the shapes agree): nothing to send or compute.
            out = q.new_zeros(q.shape)
            lse = torch.full((q.shape[1], q.shape[0]), math.inf, dtype=torch.float32, device=q.device)
        else:
            out, lse = _ring_forward(ring, q, k, v, params, base_seed, steps, calls_per_step)
        ctx.save_for_backward(q, k, v, out, lse, base_seed)
        ctx.params, ctx.ring, ctx.steps, ctx.calls_per_step = params, ring, steps, calls_per_step
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, base_seed = ctx.saved_tensors
        if q.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None, None, None
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = _ring_backward(ctx.ring, dout, q, k, v, out, lse, ctx.params, base_seed, ctx.steps,
                                    ctx.calls_per_step)
        return dq, dk, dv, None, None, None, None, None


def _check_local_cu_seqlens(cu_values: list, total: int, max_seqlen: int) -> None:
    """The values the plan relies on, checked on the host copy the call has anyway (so on CUDA too)."""
    lengths = [end - start for start, end in zip(cu_values, cu_values[1:])]
    if cu_values[0] != 0 or any(length < 0 for length in lengths) or cu_values[-1] != total:
        raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at the local token count "
                         f"({total}), got {cu_values}")
    if max(lengths, default=0) > max_seqlen:
        raise ValueError(f"max_seqlen ({max_seqlen}) is smaller than the longest local sequence "
                         f"({max(lengths)}) in cu_seqlens; pass the local max_seqlen (the global one / world_size)")


def _ring_varlen_attention(parts, cu_seqlens, max_seqlen, dropout_p, softmax_scale, causal, window_size,
                           alibi_slopes, deterministic, return_attn_probs, group, softcap, names):
    """parts: returns (q, k, v), as in ring._ring_attention."""
    # This rank's own checks, settled together with every rank's in the first collective (as in ring.py).
    error = q = k = None
    try:
        q, k, v = validation.check_qkv(*parts(), names, varlen=True)
        if k.shape[0] != q.shape[0]:
            raise ValueError(f"{names[1]} holds {k.shape[0]} tokens but {names[0]} holds {q.shape[0]}: ring "
                             "attention needs the q and k/v parts of the same tokens on each rank")
        params = ring_params(q, dropout_p, softmax_scale, causal, window_size, alibi_slopes, deterministic,
                             return_attn_probs, softcap, "contiguous")
        _, max_seqlen, _, cu_seqlens, _, _, _ = validation.check_sequences(cu_seqlens, cu_seqlens, max_seqlen,
                                                                           max_seqlen, q, k)
    except (TypeError, ValueError, NotImplementedError) as refused:
        error = refused
    group, rank, world_size = resolve_group(group, error)
    cu_values = check_same_packed_batch(q, k, cu_seqlens, max_seqlen, group, world_size, error)
    _check_local_cu_seqlens(cu_values, q.shape[0], max_seqlen)
    ring = Ring(group, rank, world_size)
    steps = _plan(ring, cu_values, cu_seqlens, params)
    calls_per_step = max(1, len(cu_values) - 1)  # one call per band: at most one per sequence
    out, softmax_lse = _RingVarlenAttention.apply(q, k, v, new_base_seed(q, params), params, ring, steps,
                                                  calls_per_step)
    if return_attn_probs:
        return out, softmax_lse, None
    return out


def ring_flash_attn_varlen_func(q, k, v, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                window_size=(-1, -1), alibi_slopes=None, deterministic=False,
                                return_attn_probs=False, group=None, *, softcap=0.0):
    """Exact attention over a packed batch of sequences, each split contiguously across the ranks of `group`.

    ring-flash-attn's API.  Every sequence b of the global packed batch has a length that is a
    multiple of W = the group's size and is cut into W contiguous pieces; rank r passes piece r of
    every sequence, packed in batch order (`varlen_shard(x, global_cu_seqlens, r, W)`): q
    (local_total, num_heads, head_dim), k and v (local_total, num_heads_k, head_dim).  cu_seqlens
    (int32 (B + 1,)) and max_seqlen describe that local layout (the global ones divided by W) and
    must be the same on every rank (ValueError otherwise).  causal and window_size apply within
    each sequence on global positions, as flash_attn_varlen_func on the whole batch; softcap
    (keyword) likewise.  dropout_p draws one seed per block call from torch's generator for q's
    device (torch.manual_seed reproduces it; the mask is not a single-GPU call's).  alibi_slopes
    raises NotImplementedError.  deterministic as in ring_flash_attn_func.

    Returns this rank's out (like q); with return_attn_probs=True, (out, softmax_lse, None),
    softmax_lse float32 (num_heads, local_total) in natural log over all of each sequence's keys.
    """
    return _ring_varlen_attention(lambda: (q, k, v), cu_seqlens, max_seqlen, dropout_p, softmax_scale, causal,
                                  window_size, alibi_slopes, deterministic, return_attn_probs, group, softcap,
                                  ("q", "k", "v"))


def _packed_parts(name: str, packed, count: int) -> tuple:
    heads = "num_heads" if count == 3 else "num_heads_k"
    validation.check_packed(name, packed, 4, 1, count, f"(local_total, {count}, {heads}, head_dim)")
    return packed.unbind(1)


def ring_flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None,
                                          causal=False, window_size=(-1, -1), alibi_slopes=None, deterministic=False,
                                          return_attn_probs=False, group=None, *, softcap=0.0):
    """ring_flash_attn_varlen_func with qkv (local_total, 3, num_heads, head_dim); gradients flow into qkv."""
    return _ring_varlen_attention(lambda: _packed_parts("qkv", qkv, 3), cu_seqlens, max_seqlen, dropout_p,
                                  softmax_scale, causal, window_size, alibi_slopes, deterministic, return_attn_probs,
                                  group, softcap, ("qkv", "qkv", "qkv"))


def ring_flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None,
                                         causal=False, window_size=(-1, -1), alibi_slopes=None, deterministic=False,
                                         return_attn_probs=False, group=None, *, softcap=0.0):
    """ring_flash_attn_varlen_func with kv (local_total, 2, num_heads_k, head_dim); gradients flow into kv."""
    return _ring_varlen_attention(lambda: (q, *_packed_parts("kv", kv, 2)), cu_seqlens, max_seqlen, dropout_p,
                                  softmax_scale, causal, window_size, alibi_slopes, deterministic, return_attn_probs,
                                  group, softcap, ("q", "kv", "kv"))
