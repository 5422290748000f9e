"""torch.library custom ops: the boundary torch.compile and autograd see.

`flashtron::attention_forward` and `flashtron::attention_backward` take
normalised arguments (see `flashtron.interface`) and return fresh contiguous
tensors.  Each has a fake implementation, so torch.compile traces through them
without a graph break, and the forward registers the backward as its autograd
formula.  `flashtron::dropout_probabilities` materialises S_dmask for
return_attn_probs with dropout.  Below this line the work goes to one of two engines at the same
level: the Triton launcher (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1) or the blockwise PyTorch path (CPU tensors).
"""

from typing import Optional

import torch

from flashtron import cpu
from flashtron.kernels import launch


def _engine(t: torch.Tensor):
    return launch if t.device.type == "cuda" or launch.INTERPRET else cpu


@torch.library.custom_op("flashtron::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float,
                      window_left: int, window_right: int, softcap: float, alibi_slopes: Optional[torch.Tensor],
                      sinks: Optional[torch.Tensor], dropout_p: float, dropout_seed: Optional[torch.Tensor],
                      allow_tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _engine(q).forward(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
                              dropout_p, dropout_seed, allow_tf32)


@attention_forward.register_fake
def _(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, dropout_seed,
      allow_tf32):
    batch, seqlen_q, num_heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((batch, num_heads, seqlen_q), dtype=torch.float32)


@torch.library.custom_op("flashtron::attention_backward", mutates_args=())
def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, softmax_lse: torch.Tensor, softmax_scale: float,
                       window_left: int, window_right: int, softcap: float,
                       alibi_slopes: Optional[torch.Tensor], sinks: Optional[torch.Tensor], dropout_p: float,
                       dropout_seed: Optional[torch.Tensor], allow_tf32: bool,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv, dsinks); dsinks is empty when there are no sinks."""
    return _engine(q).backward(dout, q, k, v, out, softmax_lse, softmax_scale, window_left, window_right,
                               softcap, alibi_slopes, sinks, dropout_p, dropout_seed, allow_tf32)


@attention_backward.register_fake
def _(dout, q, k, v, out, softmax_lse, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
      dropout_p, dropout_seed, allow_tf32):
    dsinks = softmax_lse.new_empty(0) if sinks is None else sinks.new_empty(sinks.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dsinks


def _setup_context(ctx, inputs, output):
    (q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, dropout_seed,
     allow_tf32) = inputs
    out, softmax_lse = output
    ctx.save_for_backward(q, k, v, out, softmax_lse, alibi_slopes, sinks, dropout_seed)
    ctx.params = (softmax_scale, window_left, window_right, softcap)
    ctx.dropout_p = dropout_p
    ctx.allow_tf32 = allow_tf32
    ctx.mark_non_differentiable(softmax_lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, softmax_lse, alibi_slopes, sinks, dropout_seed = ctx.saved_tensors
    if dout.stride(-1) != 1:
        # e.g. the expanded gradient of out.sum(): stride 0 everywhere.
        dout = dout.contiguous()
    dq, dk, dv, dsinks = attention_backward(dout, q, k, v, out, softmax_lse, *ctx.params, alibi_slopes, sinks,
                                            ctx.dropout_p, dropout_seed, ctx.allow_tf32)
    return dq, dk, dv, None, None, None, None, None, None if sinks is None else dsinks, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("flashtron::dropout_probabilities", mutates_args=())
def dropout_probabilities(q: torch.Tensor, k: torch.Tensor, softmax_lse: torch.Tensor, softmax_scale: float,
                          window_left: int, window_right: int, softcap: float, alibi_slopes: Optional[torch.Tensor],
                          dropout_p: float, dropout_seed: torch.Tensor) -> torch.Tensor:
    """S_dmask of return_attn_probs with dropout: the probabilities, with dropped entries negated
    (flash-attn's test convention).  Materialises (B, H, Sq, Sk): a debugging and testing aid."""
    probs = cpu.attention_probabilities(q, k, softmax_scale, window_left, window_right, softcap, alibi_slopes,
                                        softmax_lse)
    batch, seqlen_q, num_heads, _ = q.shape
    if _engine(q) is cpu:
        keep = cpu.dropout_keep_mask(dropout_seed, q, k.shape[1], window_left, window_right, dropout_p)
    else:
        keep = launch.dropout_keep_mask(dropout_seed, batch, num_heads, seqlen_q, k.shape[1], dropout_p)
    return torch.where(keep, probs, -probs).to(q.dtype)


@dropout_probabilities.register_fake
def _(q, k, softmax_lse, softmax_scale, window_left, window_right, softcap, alibi_slopes, dropout_p, dropout_seed):
    batch, seqlen_q, num_heads, _ = q.shape
    return q.new_empty((batch, num_heads, seqlen_q, k.shape[1]))
