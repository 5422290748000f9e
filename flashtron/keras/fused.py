"""A MultiHeadAttention call in one autograd Function: projections, attention, output projection.

Keras's layer runs four EinsumDense sublayers around its attention, each an einsum and a separate bias
add, and autograd strings their backward passes together with more adds.  For the plain case (no masks
beyond a causal one, one attention axis, key_dim == value_dim), `multi_head_attention` does the same
arithmetic with fewer passes over memory:

- inputs that are the same tensor share one matrix product: self-attention projects q, k and v with one
  GEMM against the three kernels side by side, its bias added by the GEMM itself;
- the attention runs on strided views of that product (flashtron's engine, no copies);
- the backward is written out: the attention's gradients land in one buffer per input, laid out as
  its projections, so each input's gradient is one GEMM, its kernels' one GEMM and its biases' one
  column sum (no stacking, no separate adds).

Measured (BENCHMARKS.md, session 37), B = 4, T = 4096, 16 heads of 128, causal, bf16, one forward+backward
step: 4.3-4.5 ms, against 5.0 ms for Keras's sublayers around flashtron's attention and 6.4-6.9 ms for Keras's
own flash path (H100s and H200s).  Eager PyTorch only (the caller checks `ops._eager`); torch.compile and
other tracers take Keras's sublayers and flashtron's traceable op instead.
"""


import torch

from flashtron import ops, validation

__all__ = ["multi_head_attention"]


def _groups(inputs):
    """Indices of the projections (0: query, 1: key, 2: value) grouped by input tensor, first use first."""
    groups = []
    for i, x in enumerate(inputs):
        for group in groups:
            if inputs[group[0]] is x:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


class _MultiHeadAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, query, key, value, wq, bq, wk, bk, wv, bv, wo, bo, num_heads, softmax_scale, window,
                dropout_p):
        inputs, weights, biases = (query, key, value), (wq, wk, wv), (bq, bk, bv)
        head_dim = wq.shape[1] // num_heads
        groups = _groups(inputs)
        flat, group_weights, projected = [], [], [None] * 3
        for group in groups:
            x = inputs[group[0]].reshape(-1, inputs[group[0]].shape[-1])
            w = weights[group[0]] if len(group) == 1 else torch.cat([weights[i] for i in group], 1)
            if biases[0] is None:
                y = torch.mm(x, w)
            else:
                y = torch.addmm(biases[group[0]] if len(group) == 1 else torch.cat([biases[i] for i in group]), x, w)
            y = y.view(*inputs[group[0]].shape[:-1], len(group), num_heads, head_dim)
            for j, i in enumerate(group):
                projected[i] = y[..., j, :, :]
            flat.append(x)
            group_weights.append(w)
        q, k, v = validation.check_qkv(*projected, names=("query", "key", "value"))
        allow_tf32 = torch.backends.cuda.matmul.allow_tf32
        seed = ops.dropout_seed(dropout_p, q.device)
        attention = (softmax_scale, *window, 0.0, None, None, dropout_p, seed, allow_tf32)
        out, lse = ops._engine(q).forward(q, k, v, *attention)
        out_flat = out.view(-1, out.shape[-2] * out.shape[-1])
        result = torch.mm(out_flat, wo) if bo is None else torch.addmm(bo, out_flat, wo)
        ctx.save_for_backward(q, k, v, out, lse, wo, seed, *flat, *group_weights)
        ctx.groups, ctx.attention, ctx.has_bias = groups, attention, biases[0] is not None
        ctx.input_shapes = [x.shape for x in inputs]
        return result.view(*query.shape[:-1], wo.shape[1])

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, wo, seed, *saved = ctx.saved_tensors
        groups = ctx.groups
        flat, group_weights = saved[:len(groups)], saved[len(groups):]
        needs = ctx.needs_input_grad
        grad = grad.reshape(-1, grad.shape[-1])
        out_flat = out.view(-1, out.shape[-2] * out.shape[-1])
        dout = torch.mm(grad, wo.t()).view(out.shape)
        dwo = torch.mm(out_flat.t(), grad) if needs[9] else None
        dbo = grad.sum(0) if ctx.has_bias and needs[10] else None
        # dq, dk and dv land in one buffer per group, laid out as the group's projections: its input's
        # gradient is then one GEMM, its kernels' one GEMM and its biases' one column sum.
        packed, grads = [], [None] * 3
        for group in groups:
            shape = ctx.input_shapes[group[0]][:-1] + (len(group), ) + q.shape[-2:]
            packed.append(torch.empty(shape, dtype=q.dtype, device=q.device))
            for j, i in enumerate(group):
                grads[i] = packed[-1][..., j, :, :]
        scale, left, right, softcap, alibi, sinks, dropout_p, _, allow_tf32 = ctx.attention
        ops._engine(q).backward(dout, q, k, v, out, lse, scale, left, right, softcap, alibi, sinks, dropout_p, seed,
                                allow_tf32, grads=tuple(grads))
        dinputs, dweights, dbiases = [None] * 3, [None] * 3, [None] * 3
        width = q.shape[-2] * q.shape[-1]
        for group, x, w, d in zip(groups, flat, group_weights, packed):
            d = d.view(-1, len(group) * width)
            if needs[group[0]]:
                dinputs[group[0]] = torch.mm(d, w.t()).view(ctx.input_shapes[group[0]])
            dw = torch.mm(x.t(), d) if any(needs[3 + 2 * i] for i in group) else None
            db = d.sum(0) if ctx.has_bias and any(needs[4 + 2 * i] for i in group) else None
            for j, i in enumerate(group):
                columns = slice(j * width, (j + 1) * width)
                dweights[i] = None if dw is None else dw[:, columns]
                dbiases[i] = None if db is None else db[columns]
        return (*dinputs, dweights[0], dbiases[0], dweights[1], dbiases[1], dweights[2], dbiases[2], dwo, dbo,
                None, None, None, None)


def multi_head_attention(query, key, value, wq, bq, wk, bk, wv, bv, wo, bo, num_heads: int, softmax_scale: float,
                         window=(-1, -1), dropout_p: float = 0.0):
    """query (B, T, Eq), key (B, S, Ek), value (B, S, Ev); wq (Eq, N·D), wk (Ek, N·D), wv (Ev, N·D) and
    wo (N·D, Eo), biases (N·D,) and (Eo,) or all None.  Attention over the projections with flashtron's
    window (left, right) (bottom-right aligned, -1 unbounded; (-1, 0) is causal) and attention dropout
    dropout_p.  Returns (B, T, Eo).  Inputs that are one tensor (self-attention) are projected together."""
    return _MultiHeadAttention.apply(query, key, value, wq, bq, wk, bk, wv, bv, wo, bo, num_heads, softmax_scale,
                                     tuple(window), dropout_p)
