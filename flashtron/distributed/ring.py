"""Ring attention: exact attention over a sequence split across the ranks of a process group.

Each of W ranks holds an equal part of the global sequence (a `layout`: contiguous or zigzag) for
q, k and v.  The key/value parts travel around the ring (`ring_pass`): at step s a rank holds
rank - s's keys, starts shifting them to rank + 1 (one batched isend/irecv) and, while they travel,
computes its queries against them with `ops.attention_forward` on the rectangles `block_plan`
gives (full, diagonal, skipped, or zigzag's halves), folding each result into float32 accumulators
through its log-sum-exp (`merge`).  The backward runs the same ring: per block, `ops.attention_backward`
with the final out and lse gives the block's exact share of dq (accumulated locally in float32)
and its exact dk, dv, which travel with the ring in float32, each rank adding its share, until
they reach the block's owner after W shifts.  Dropout draws one seed per (query rank, key rank,
call) from a base seed saved for the backward, so the backward regenerates every block's mask.
"""

import math
from typing import NamedTuple, Optional

import torch

from flashtron import ops, validation
from flashtron.distributed import merge, ring_pass
from flashtron.distributed.block_plan import plan_step
from flashtron.distributed.comm import Ring, check_same_shapes, resolve_group
from flashtron.distributed.layout import chunks_per_rank

# plan_step gives at most one call per pair of segments: 2 x 2 for zigzag.
_MAX_CALLS_PER_STEP = 4


class RingParams(NamedTuple):
    layout: str
    softmax_scale: float
    window_left: int
    window_right: int
    softcap: float
    dropout_p: float
    allow_tf32: bool
    deterministic: bool  # the block backward calls: atomic-free (bit-for-bit reproducible) or the fastest


def block_seed(base_seed: Optional[torch.Tensor], ring: Ring, key_rank: int, index: int,
               calls_per_step: int = _MAX_CALLS_PER_STEP):
    """The dropout seed of one call: distinct for every (query rank, key rank, call) of a forward,
    given at most `calls_per_step` calls per step."""
    if base_seed is None:
        return None
    assert index < calls_per_step
    return base_seed + ((ring.rank * ring.world_size + key_rank) * calls_per_step + index)


def _steps(ring: Ring, params: RingParams, seqlen_local: int):
    """(step, key rank, the step's calls) in ring order."""
    for step in range(ring.world_size):
        key_rank = (ring.rank - step) % ring.world_size
        yield step, key_rank, plan_step(ring.rank, key_rank, ring.world_size, seqlen_local, params.layout,
                                        params.window_left, params.window_right)


def _ring_forward(ring: Ring, q, k, v, params: RingParams, base_seed):
    batch, seqlen, num_heads, head_dim = q.shape
    out, lse = merge.new_accumulators(batch, seqlen, num_heads, head_dim, q.device)

    def attend(key_value, key_rank, index, call):
        rows, keys = slice(call.query_start, call.query_end), slice(call.key_start, call.key_end)
        block_out, block_lse = ops.attention_forward(
            q[:, rows], key_value[0, :, keys], key_value[1, :, keys], params.softmax_scale,
            call.window_left, call.window_right, params.softcap, None, None, params.dropout_p,
            block_seed(base_seed, ring, key_rank, index), params.allow_tf32)
        merge.merge_block(out[:, rows], lse[:, :, rows], block_out, block_lse)

    ring_pass.forward_pass(ring, torch.stack((k, v)), _steps(ring, params, seqlen), attend)
    return merge.finish(out, lse, q.dtype)


def _ring_backward(ring: Ring, dout, q, k, v, out, lse, params: RingParams, base_seed):
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)

    def differentiate(key_value, key_rank, index, call, block_gradient):
        rows, keys = slice(call.query_start, call.query_end), slice(call.key_start, call.key_end)
        # lse is read with contiguous strides by the kernels; out and dout by their strides.
        block_dq, block_dk, block_dv, *_ = ops.attention_backward(
            dout[:, rows], q[:, rows], key_value[0, :, keys], key_value[1, :, keys], out[:, rows],
            lse[:, :, rows].contiguous(), params.softmax_scale, call.window_left, call.window_right,
            params.softcap, None, None, params.dropout_p, block_seed(base_seed, ring, key_rank, index),
            params.allow_tf32, deterministic=params.deterministic)
        dq[:, rows] += block_dq
        block_gradient[0, :, keys] += block_dk
        block_gradient[1, :, keys] += block_dv

    own_gradient = ring_pass.backward_pass(ring, torch.stack((k, v)), _steps(ring, params, q.shape[1]),
                                           differentiate)
    return dq.to(q.dtype), own_gradient[0].to(k.dtype), own_gradient[1].to(v.dtype)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, base_seed, params: RingParams, ring: Ring):
        if q.numel() == 0:
            # Every rank holds an empty part (the shapes agree): nothing to send or compute.
            out = q.new_zeros(q.shape)
            lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), math.inf, dtype=torch.float32, device=q.device)
        else:
            out, lse = _ring_forward(ring, q, k, v, params, base_seed)
        ctx.save_for_backward(q, k, v, out, lse, base_seed)
        ctx.params, ctx.ring = params, ring
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, base_seed = ctx.saved_tensors
        if q.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None, None
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = _ring_backward(ctx.ring, dout, q, k, v, out, lse, ctx.params, base_seed)
        return dq, dk, dv, None, None, None


def ring_params(q, dropout_p, softmax_scale, causal, window_size, alibi_slopes, deterministic, return_attn_probs,
                softcap, layout: str) -> RingParams:
    """Check the options every ring function shares and normalise them (q: for its head dim)."""
    softmax_scale = validation.softmax_scale_or_default(softmax_scale, q.shape[-1])
    window_left, window_right = validation.window_bounds(causal, window_size)
    dropout_p = validation.check_dropout(dropout_p)
    softcap = validation.check_softcap(softcap)
    if alibi_slopes is not None:
        raise NotImplementedError("alibi_slopes is not supported by ring attention: ALiBi's bias depends on "
                                  "global positions, which the block calls do not see; pass alibi_slopes=None, "
                                  "or use flash_attn_func on the whole sequence")
    validation.check_flag("deterministic", deterministic)
    validation.check_flag("return_attn_probs", return_attn_probs)
    return RingParams(layout, softmax_scale, window_left, window_right, softcap, dropout_p,
                      torch.backends.cuda.matmul.allow_tf32, deterministic)


def new_base_seed(q, params: RingParams) -> Optional[torch.Tensor]:
    """With dropout, one base seed per call from torch's generator for q's device (torch.manual_seed
    reproduces it); every block call derives its own from it (`block_seed`)."""
    return ops.dropout_seed(params.dropout_p, q.device)


def _ring_attention(parts, dropout_p, softmax_scale, causal, window_size, alibi_slopes, deterministic,
                    return_attn_probs, group, softcap, layout, names):
    """parts: returns (q, k, v), checking a packed tensor first where there is one (it may raise, like the other
    checks of this rank, which settle together with every rank's)."""
    # This rank's own checks, then one collective that every rank reaches and that settles them together: a
    # rank that raised alone would leave the others waiting in the ring's exchanges.
    error = q = k = None
    try:
        q, k, v = validation.check_qkv(*parts(), names)
        if k.shape[1] != q.shape[1]:
            raise ValueError(f"{names[1]} holds {k.shape[1]} positions but {names[0]} holds {q.shape[1]}: ring "
                             "attention needs the q and k/v parts of the same positions on each rank")
        params = ring_params(q, dropout_p, softmax_scale, causal, window_size, alibi_slopes, deterministic,
                             return_attn_probs, softcap, layout)
        if q.shape[1] % chunks_per_rank(layout) != 0:
            raise ValueError(f"{names[0]} holds {q.shape[1]} positions; the zigzag layout needs an even local "
                             "sequence length (two equal chunks per rank)")
    except (TypeError, ValueError, NotImplementedError) as refused:
        error = refused
    group, rank, world_size = resolve_group(group, error)
    check_same_shapes(q, k, group, world_size, error)
    out, softmax_lse = _RingAttention.apply(q, k, v, new_base_seed(q, params), params, Ring(group, rank, world_size))
    if return_attn_probs:
        return out, softmax_lse, None
    return out


def ring_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                         alibi_slopes=None, deterministic=False, return_attn_probs=False, group=None, *,
                         softcap=0.0):
    """Exact attention over a global sequence split contiguously across the ranks of `group`.

    ring-flash-attn's API.  Each rank of `group` (None: the default group) passes its part:
    rank r holds global positions [r * seqlen_local, (r + 1) * seqlen_local) (`shard(x, r, W,
    layout="contiguous")`) of q (batch, seqlen_local, num_heads, head_dim) and of k and v
    (batch, seqlen_local, num_heads_k, head_dim), with the same shapes on every rank (ValueError
    otherwise), num_heads a multiple of num_heads_k (GQA/MQA), float16, bfloat16 or float32.
    causal and window_size apply to global positions, as flash_attn_func on the whole sequence;
    softcap (keyword) likewise.  dropout_p draws one seed per block call from torch's generator
    for q's device (torch.manual_seed reproduces it; the mask is not a single-GPU call's).
    alibi_slopes raises NotImplementedError.  deterministic=True makes the backward bit-for-bit reproducible
    (the block calls take the atomic-free kernels, as flash_attn_func's); the ring itself sums in a fixed
    order.  Under a causal mask the contiguous layout leaves late ranks with most of the
    work: see zigzag_ring_flash_attn_func.

    Returns this rank's out (like q); with return_attn_probs=True, (out, softmax_lse, None),
    softmax_lse float32 (batch, num_heads, seqlen_local) in natural log over all global keys.
    """
    return _ring_attention(lambda: (q, k, v), dropout_p, softmax_scale, causal, window_size, alibi_slopes,
                           deterministic, return_attn_probs, group, softcap, "contiguous", ("q", "k", "v"))


def zigzag_ring_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                                alibi_slopes=None, deterministic=False, return_attn_probs=False, group=None, *,
                                softcap=0.0):
    """ring_flash_attn_func for the zigzag layout, which balances causal work across ranks.

    The global sequence is cut into 2W chunks and rank r holds chunks r and 2W - 1 - r,
    concatenated (`shard(x, r, W, layout="zigzag")`); seqlen_local must be even.  Everything
    else as ring_flash_attn_func.
    """
    return _ring_attention(lambda: (q, k, v), dropout_p, softmax_scale, causal, window_size, alibi_slopes,
                           deterministic, return_attn_probs, group, softcap, "zigzag", ("q", "k", "v"))


def _qkvpacked_parts(qkv):
    validation.check_packed("qkv", qkv, 5, 2, 3, "(batch, seqlen_local, 3, num_heads, head_dim)")
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


def _kvpacked_parts(kv):
    validation.check_packed("kv", kv, 5, 2, 2, "(batch, seqlen_local, 2, num_heads_k, head_dim)")
    return kv[:, :, 0], kv[:, :, 1]


def ring_flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                                   alibi_slopes=None, deterministic=False, return_attn_probs=False, group=None, *,
                                   softcap=0.0):
    """ring_flash_attn_func with qkv (batch, seqlen_local, 3, num_heads, head_dim); gradients flow into qkv."""
    return _ring_attention(lambda: _qkvpacked_parts(qkv), dropout_p, softmax_scale, causal, window_size,
                           alibi_slopes, deterministic, return_attn_probs, group, softcap, "contiguous",
                           ("qkv", "qkv", "qkv"))


def ring_flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                                  alibi_slopes=None, deterministic=False, return_attn_probs=False, group=None, *,
                                  softcap=0.0):
    """ring_flash_attn_func with kv (batch, seqlen_local, 2, num_heads_k, head_dim); gradients flow into kv."""
    return _ring_attention(lambda: (q, *_kvpacked_parts(kv)), dropout_p, softmax_scale, causal, window_size,
                           alibi_slopes, deterministic, return_attn_probs, group, softcap, "contiguous",
                           ("q", "kv", "kv"))


def zigzag_ring_flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                                          window_size=(-1, -1), alibi_slopes=None, deterministic=False,
                                          return_attn_probs=False, group=None, *, softcap=0.0):
    """zigzag_ring_flash_attn_func with qkv (batch, seqlen_local, 3, num_heads, head_dim)."""
    return _ring_attention(lambda: _qkvpacked_parts(qkv), dropout_p, softmax_scale, causal, window_size,
                           alibi_slopes, deterministic, return_attn_probs, group, softcap, "zigzag",
                           ("qkv", "qkv", "qkv"))


def zigzag_ring_flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                                         window_size=(-1, -1), alibi_slopes=None, deterministic=False,
                                         return_attn_probs=False, group=None, *, softcap=0.0):
    """zigzag_ring_flash_attn_func with kv (batch, seqlen_local, 2, num_heads_k, head_dim)."""
    return _ring_attention(lambda: (q, *_kvpacked_parts(kv)), dropout_p, softmax_scale, causal, window_size,
                           alibi_slopes, deterministic, return_attn_probs, group, softcap, "zigzag",
                           ("q", "kv", "kv"))
