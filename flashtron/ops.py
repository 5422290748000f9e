"""torch.library custom ops: the boundary torch.compile and autograd see.

`flashtron::attention_forward` and `flashtron::attention_backward` take
normalised arguments (see `flashtron.interface`) and return fresh contiguous
tensors.  Each has a fake implementation, so torch.compile traces through them
without a graph break, and the forward registers the backward as its autograd
formula (once-differentiable: a double backward raises).  The public functions
call `attention`: under torch.compile, a dispatch mode (FakeTensor, make_fx,
FlopCounterMode), torch.func.vmap or a tensor subclass it calls the op; in plain
eager mode it calls the engine itself, through an autograd.Function with the
same formula (the op's dispatch costs more host time than a short kernel runs);
the packed forms' calls use a second Function that writes the packed tensor's
gradient whole.  Forward-mode differentiation and torch.func's grad-style
transforms raise NotImplementedError.  The forward op checks the values of its
index tensors where the public functions could not (torch.compile's tracing).
`flashtron::dropout_probabilities` materialises S_dmask for return_attn_probs
with dropout.  Below this line the work goes to one
of two engines at the same level: the Triton launcher (CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1) or the blockwise PyTorch path (CPU tensors).
"""

import functools
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from flashtron import cpu, validation
from flashtron.kernels import launch


def _engine(t: torch.Tensor):
    return launch if t.device.type == "cuda" or launch.INTERPRET else cpu


@torch.library.custom_op("flashtron::attention_forward", mutates_args=())
def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float,
                      window_left: int, window_right: int, softcap: float, alibi_slopes: Optional[torch.Tensor],
                      sinks: Optional[torch.Tensor], dropout_p: float, dropout_seed: Optional[torch.Tensor],
                      allow_tf32: bool, cu_seqlens_q: Optional[torch.Tensor] = None,
                      cu_seqlens_k: Optional[torch.Tensor] = None, seqused_q: Optional[torch.Tensor] = None,
                      seqused_k: Optional[torch.Tensor] = None, max_seqlen_q: int = -1, max_seqlen_k: int = -1,
                      attn_bias: Optional[torch.Tensor] = None, block_table: Optional[torch.Tensor] = None,
                      cache_batch_idx: Optional[torch.Tensor] = None, cache_leftpad: Optional[torch.Tensor] = None,
                      num_splits: int = 1, pack_gqa: bool = False, descale: Optional[torch.Tensor] = None,
                      deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, softmax_lse).  Dense: q (B, Sq, H, D), lse (B, H, Sq).  Variable-length (cu_seqlens
    given): q (total_q, H, D), lse (H, total_q), max_seqlen_* bound every sequence's length.
    seqused_q / seqused_k (int32 (B,)) cut each sequence to its first seqused[b] rows.  attn_bias
    (dense only): 4-D, each dim 1 or (B, H, Sq, Sk)'s, added to the logits.  KV caches (forward
    only): block_table (B, pages per sequence) with k, v (pages, page_size, Hk, D); cache_batch_idx
    (B,), k's batch row of each sequence; cache_leftpad (B,), keys before it are padding;
    num_splits > 1 splits each tile's keys over that many programs (dense q), 0 picks a count; pack_gqa
    puts a kv head's query heads in one tile (decoding: few queries, each group's keys read once).
    descale (FP8 inputs, forward only): float32 (3, B, Hk), the q, k and v factors; out is bfloat16.
    deterministic only reaches the backward: it asks for bit-for-bit reproducible gradients."""
    validation.check_values_when_run(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q,
                                     seqused_k, block_table, cache_batch_idx, cache_leftpad)
    return _engine(q).forward(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
                              dropout_p, dropout_seed, allow_tf32, cu_seqlens_q, cu_seqlens_k, seqused_q,
                              seqused_k, max_seqlen_q, max_seqlen_k, attn_bias, block_table, cache_batch_idx,
                              cache_leftpad, num_splits, pack_gqa, descale)


def _lse_shape(q, cu_seqlens_q):
    return (q.shape[-2], q.shape[0]) if cu_seqlens_q is not None else (q.shape[0], q.shape[2], q.shape[1])


@attention_forward.register_fake
def _(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, dropout_seed,
      allow_tf32, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None, max_seqlen_q=-1,
      max_seqlen_k=-1, attn_bias=None, block_table=None, cache_batch_idx=None, cache_leftpad=None, num_splits=1,
      pack_gqa=False, descale=None, deterministic=False):
    out_dtype = torch.bfloat16 if descale is not None else q.dtype
    return q.new_empty(q.shape, dtype=out_dtype), q.new_empty(_lse_shape(q, cu_seqlens_q), dtype=torch.float32)


@torch.library.custom_op("flashtron::attention_backward", mutates_args=())
def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       out: torch.Tensor, softmax_lse: torch.Tensor, softmax_scale: float,
                       window_left: int, window_right: int, softcap: float,
                       alibi_slopes: Optional[torch.Tensor], sinks: Optional[torch.Tensor], dropout_p: float,
                       dropout_seed: Optional[torch.Tensor], allow_tf32: bool,
                       cu_seqlens_q: Optional[torch.Tensor] = None, cu_seqlens_k: Optional[torch.Tensor] = None,
                       seqused_q: Optional[torch.Tensor] = None, seqused_k: Optional[torch.Tensor] = None,
                       max_seqlen_q: int = -1, max_seqlen_k: int = -1, attn_bias: Optional[torch.Tensor] = None,
                       bias_requires_grad: bool = False, deterministic: bool = False,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv, dsinks, dbias); dsinks is empty when there are no sinks, dbias (the shape and
    dtype of attn_bias) unless bias_requires_grad.  deterministic: no float atomics (the same bits every run)."""
    return _engine(q).backward(dout, q, k, v, out, softmax_lse, softmax_scale, window_left, window_right,
                               softcap, alibi_slopes, sinks, dropout_p, dropout_seed, allow_tf32,
                               cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k,
                               attn_bias, bias_requires_grad, deterministic)


@attention_backward.register_fake
def _(dout, q, k, v, out, softmax_lse, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
      dropout_p, dropout_seed, allow_tf32, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
      max_seqlen_q=-1, max_seqlen_k=-1, attn_bias=None, bias_requires_grad=False, deterministic=False):
    dsinks = softmax_lse.new_empty(0) if sinks is None else sinks.new_empty(sinks.shape)
    dbias = attn_bias.new_empty(attn_bias.shape) if bias_requires_grad else softmax_lse.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dsinks, dbias


def _setup_context(ctx, inputs, output):
    (q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, dropout_seed,
     allow_tf32, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k, attn_bias,
     block_table, cache_batch_idx, cache_leftpad, _num_splits, _pack_gqa, descale, deterministic) = inputs
    out, softmax_lse = output
    ctx.kv_cache = block_table is not None or cache_batch_idx is not None or cache_leftpad is not None
    ctx.fp8 = descale is not None
    ctx.save_for_backward(q, k, v, out, softmax_lse, alibi_slopes, sinks, dropout_seed,
                          cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, attn_bias)
    ctx.params = (softmax_scale, window_left, window_right, softcap)
    ctx.dropout_p = dropout_p
    ctx.allow_tf32 = allow_tf32
    ctx.deterministic = deterministic
    ctx.max_seqlens = (max_seqlen_q, max_seqlen_k)
    ctx.mark_non_differentiable(softmax_lse)
    # softmax_lse never has a gradient: without this, autograd would fill one with zeros for every backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dlse, grads=None, saved=None):
    """attention_forward's gradients; grads: (dq, dk, dv) to write them into (`_PackedAttention`).  saved:
    ctx.saved_tensors where the caller has unpacked them already (non-reentrant checkpointing allows one unpacking
    per backward)."""
    if ctx.fp8:
        raise NotImplementedError("float8_e4m3fn attention has no backward (forward only, as in FlashAttention-3)")
    if ctx.kv_cache:
        raise NotImplementedError("attention over a KV cache (block_table, cache_batch_idx or cache_leftpad) has "
                                  "no backward: it serves inference; pass tensors that do not require grad")
    if dout is None:  # nothing flowed into out
        return (None, ) * _NUM_INPUTS
    saved = ctx.saved_tensors if saved is None else saved
    (q, k, v, out, softmax_lse, alibi_slopes, sinks, dropout_seed,
     cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, attn_bias) = saved
    if dout.stride(-1) != 1:
        # e.g. the expanded gradient of out.sum(): stride 0 everywhere.
        dout = dout.contiguous()
    # _PackedAttention's inputs start with the packed tensor and its dim.
    bias_requires_grad = (attn_bias is not None
                          and ctx.needs_input_grad[_ATTN_BIAS_INPUT + getattr(ctx, "leading_inputs", 0)])
    arguments = (dout, q, k, v, out, softmax_lse, *ctx.params, alibi_slopes, sinks, ctx.dropout_p, dropout_seed,
                 ctx.allow_tf32, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, *ctx.max_seqlens, attn_bias,
                 bias_requires_grad, ctx.deterministic)
    if _eager(dout, *saved):
        dq, dk, dv, dsinks, dbias = _engine(q).backward(*arguments, grads=grads)
    else:
        dq, dk, dv, dsinks, dbias = attention_backward(*arguments)
        if grads is not None:
            dq, dk, dv = (given.copy_(computed) for given, computed in zip(grads, (dq, dk, dv)))
    return (dq, dk, dv, None, None, None, None, None, None if sinks is None else dsinks, None, None, None,
            None, None, None, None, None, None, dbias if bias_requires_grad else None, None, None, None, None,
            None, None, None)


# attention_forward's inputs, in order: attn_bias is the 19th of 26.
_ATTN_BIAS_INPUT = 18
_NUM_INPUTS = 26


def _once_differentiable(backward):
    """torch's once_differentiable, which costs ~5 us of host time a call, taken only where it acts: with create_graph
    (grad mode on in the backward).  The backward is not itself differentiable: a double backward raises instead of
    returning a partial second derivative."""
    wrapped = once_differentiable(backward)

    @functools.wraps(backward)
    def either(ctx, *args, **kwargs):
        return (wrapped if torch.is_grad_enabled() else backward)(ctx, *args, **kwargs)
    return either


attention_forward.register_autograd(_once_differentiable(_backward), setup_context=_setup_context)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _eager(*tensors) -> bool:
    """True when only eager PyTorch sees this call: not torch.compile, no dispatch or function mode, no
    functorch transform, and every tensor (None allowed) a plain tensor or Parameter.  Such calls go to the
    engine directly; everything else through the ops, which those tracers and transforms understand."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._len_torch_function_stack() == 0 and not torch._C._are_functorch_transforms_active()
            and all(t is None or type(t) in _PLAIN_TENSORS for t in tensors))


class _Attention(torch.autograd.Function):
    """attention_forward's formula, applied in eager mode around the engine itself.  Through the op, an eager
    step spent 1.3-1.6 ms of host time on the GPU machine (BENCHMARKS.md, sessions 10 and 11), longer than a
    short kernel runs: torch.library's autograd wrapper fills in the schema's defaults per call, and the op's
    dispatch and alias checks run each way."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _engine(inputs[0]).forward(*inputs[:_ENGINE_INPUTS])
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_once_differentiable(_backward))


# The engines' forward takes attention_forward's inputs but the last (deterministic reaches the backward only).
_ENGINE_INPUTS = 25


class _PackedAttention(torch.autograd.Function):
    """_Attention where k and v (and q) are views of one packed tensor, qkv or kv (flash_attn_qkvpacked_func and
    the other packed forms): the backward writes their gradients into one tensor of the packed layout.  Through
    the views autograd would instead build one zero-filled packed-size gradient per view and add them up: the
    qkv-packed forward+backward took 1.30x the time of separate tensors (BENCHMARKS.md, session 37)."""

    @staticmethod
    def forward(ctx, packed, dim, *inputs):
        output = _engine(inputs[0]).forward(*inputs[:_ENGINE_INPUTS])
        _setup_context(ctx, inputs, output)
        ctx.packed_dim = dim
        ctx.leading_inputs = 2
        ctx.packed_layout = packed.detach()  # its shape and strides (no copy)
        return output

    @staticmethod
    @_once_differentiable
    def backward(ctx, dout, dlse):
        saved = ctx.saved_tensors
        layout, q = ctx.packed_layout, saved[0]
        dpacked = torch.empty_like(layout)
        parts = dpacked.unbind(ctx.packed_dim)
        dq = parts[0] if len(parts) == 3 else torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if launch.POISON_OUTPUTS:
            dpacked.fill_(float("nan"))
            dq.fill_(float("nan"))
        gradients = _backward(ctx, dout, dlse, grads=(dq, *parts[-2:]), saved=saved)
        if gradients[0] is None:  # nothing flowed into out
            return (None, None, *gradients)
        return (dpacked, None, None if len(parts) == 3 else gradients[0], None, None, *gradients[3:])


def dropout_seed(dropout_p: float, device) -> Optional[torch.Tensor]:
    """With dropout, one seed per call from torch's generator for the device (torch.manual_seed reproduces it); it
    stays on the device, so no host synchronisation.  The kernels derive every draw from it.  None without."""
    if dropout_p == 0:
        return None
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


def _packed_views(packed, q, k, v) -> bool:
    """Whether k and v (and q, when packed holds three) are packed's parts along packed[1] as they are."""
    tensor, dim = packed
    parts = tensor.unbind(dim)
    views = (q, k, v)[-len(parts):]
    return tensor.stride(-1) == 1 and all(t.data_ptr() == p.data_ptr() and t.stride() == p.stride()
                                          for t, p in zip(views, parts))


def _unsupported_differentiation(*tensors) -> Optional[str]:
    """The differentiation asked of this call that flashtron cannot give, or None: forward mode (torch.func.jvp,
    jacfwd, torch.autograd.forward_ad), whose tangents would otherwise be dropped silently, and torch.func.grad-style
    transforms (grad, vjp, jacrev), which torch's custom-op autograd does not support."""
    if torch._C._are_functorch_transforms_active():
        for interpreter in torch._C._functorch.get_interpreter_stack() or ():
            if interpreter.key() == torch._C._functorch.TransformType.Jvp:
                return "forward-mode differentiation (torch.func.jvp, jacfwd)"
            if interpreter.key() == torch._C._functorch.TransformType.Grad:
                return "torch.func.grad, vjp or jacrev"
    if torch.autograd.forward_ad._current_level >= 0 and any(
            t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        return "forward-mode differentiation (torch.autograd.forward_ad)"
    return None


def attention(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p,
              dropout_seed, allow_tf32, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
              max_seqlen_q=-1, max_seqlen_k=-1, attn_bias=None, block_table=None, cache_batch_idx=None,
              cache_leftpad=None, num_splits=1, pack_gqa=False, descale=None, deterministic=False, packed=None):
    """attention_forward (same arguments), differentiable in q, k, v, sinks and attn_bias (not alibi_slopes or the
    descales).  packed: (tensor, dim) where q, k and v (or k and v) are tensor.unbind(dim), for the packed forms:
    their gradient is then written as one tensor (eager mode)."""
    unsupported = _unsupported_differentiation(q, k, v, sinks, attn_bias)
    if unsupported is not None:
        raise NotImplementedError(f"flashtron's attention is differentiable by torch.autograd's reverse mode "
                                  f"(backward(), torch.autograd.grad), as flash-attn's is; {unsupported} is not "
                                  f"supported")
    if alibi_slopes is not None:  # no gradient on any path (as in flash-attn), though the CPU path could give one
        alibi_slopes = alibi_slopes.detach()
    inputs = (q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p,
              dropout_seed, allow_tf32, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k,
              attn_bias, block_table, cache_batch_idx, cache_leftpad, num_splits, pack_gqa, descale, deterministic)
    if not _eager(q, k, v, alibi_slopes, sinks, dropout_seed, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k,
                  attn_bias, block_table, cache_batch_idx, cache_leftpad, descale):
        return attention_forward(*inputs)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, sinks, attn_bias)):
        if packed is not None and packed[0].requires_grad and _packed_views(packed, q, k, v):
            return _PackedAttention.apply(*packed, *inputs)
        return _Attention.apply(*inputs)
    return _engine(q).forward(*inputs[:_ENGINE_INPUTS])


@torch.library.custom_op("flashtron::dropout_probabilities", mutates_args=())
def dropout_probabilities(q: torch.Tensor, k: torch.Tensor, softmax_lse: torch.Tensor, softmax_scale: float,
                          window_left: int, window_right: int, softcap: float, alibi_slopes: Optional[torch.Tensor],
                          dropout_p: float, dropout_seed: torch.Tensor, cu_seqlens_q: Optional[torch.Tensor] = None,
                          cu_seqlens_k: Optional[torch.Tensor] = None, seqused_q: Optional[torch.Tensor] = None,
                          seqused_k: Optional[torch.Tensor] = None, max_seqlen_q: int = -1,
                          max_seqlen_k: int = -1, attn_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """S_dmask of return_attn_probs with dropout: the probabilities, with dropped entries negated
    (flash-attn's test convention), (B, H, Sq, Sk), or (B, H, max_seqlen_q, max_seqlen_k) for
    variable-length batches (0 outside each sequence).  Materialised: a debugging and testing aid,
    which reads sequence lengths on the host."""
    if cu_seqlens_q is None and seqused_q is None and seqused_k is None:
        return _dense_dropout_probabilities(q, k, softmax_lse, softmax_scale, window_left, window_right, softcap,
                                            alibi_slopes, dropout_p, dropout_seed, 0, attn_bias)
    varlen = cu_seqlens_q is not None
    batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
    rows_q = max_seqlen_q if varlen else q.shape[1]
    rows_k = max_seqlen_k if varlen else k.shape[1]
    s_dmask = q.new_zeros((batch, q.shape[-2], rows_q, rows_k))
    for b, q_rows, k_rows in cpu.sequences(q, k, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k):
        lse_b = softmax_lse[:, q_rows[0]] if varlen else softmax_lse[b, :, q_rows[1]]
        slopes = cpu.sequence_slopes(alibi_slopes, b)
        block = _dense_dropout_probabilities(q[q_rows][None], k[k_rows][None], lse_b[None], softmax_scale,
                                             window_left, window_right, softcap, slopes, dropout_p, dropout_seed, b)
        s_dmask[b, :, :block.shape[2], :block.shape[3]] = block[0]
    return s_dmask


def _dense_dropout_probabilities(q, k, softmax_lse, softmax_scale, window_left, window_right, softcap,
                                 alibi_slopes, dropout_p, dropout_seed, sequence, attn_bias=None):
    """Dense S_dmask of one batch (or of sequence `sequence` of a variable-length batch, as a batch of one:
    each engine draws sequence b's mask from its own counters)."""
    probs = cpu.attention_probabilities(q, k, softmax_scale, window_left, window_right, softcap, alibi_slopes,
                                        softmax_lse, attn_bias)
    batch, seqlen_q, num_heads, _ = q.shape
    if _engine(q) is cpu:
        keep = cpu.dropout_keep_mask(cpu.sequence_seed(dropout_seed, sequence), q, k.shape[1], window_left,
                                     window_right, dropout_p)
    else:
        keep = launch.dropout_keep_mask(dropout_seed, batch, num_heads, seqlen_q, k.shape[1], dropout_p,
                                        first_batch=sequence)
    return torch.where(keep, probs, -probs).to(q.dtype)


@dropout_probabilities.register_fake
def _(q, k, softmax_lse, softmax_scale, window_left, window_right, softcap, alibi_slopes, dropout_p, dropout_seed,
      cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None, max_seqlen_q=-1, max_seqlen_k=-1,
      attn_bias=None):
    if cu_seqlens_q is not None:
        return q.new_empty((cu_seqlens_q.shape[0] - 1, q.shape[-2], max_seqlen_q, max_seqlen_k))
    batch, seqlen_q, num_heads, _ = q.shape
    return q.new_empty((batch, num_heads, seqlen_q, k.shape[1]))
