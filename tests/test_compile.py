"""torch.compile and the custom ops.

flash_attn_func / flash_attn_qkvpacked_func must compile with fullgraph=True
(no graph break anywhere in the validation or the call), forward and backward,
and give what eager gives.  The backend is aot_eager: it still traces the custom
ops through their fake implementations and autograd formula (what inductor
would see), without inductor's slow CPU code generation.  torch.library.opcheck
checks the ops' schemas, fake implementations and autograd registration.

Runs on the CPU, in plain mode and under TRITON_INTERPRET=1; sizes are tiny.
"""

import types

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from torch.utils._python_dispatch import TorchDispatchMode

from flashtron import flash_attn_func, flash_attn_qkvpacked_func, ops


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _fwd_bwd(fn, inputs, douts):
    """Run fn on fresh leaf copies of inputs; return (outputs, input gradients)."""
    leaves = _leaves(*inputs)
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward([o for o in outs if o.requires_grad], list(douts))
    return [o.detach() for o in outs], [t.grad for t in leaves]


def _assert_same(eager, compiled):
    (out_e, grads_e), (out_c, grads_c) = eager, compiled
    assert len(out_e) == len(out_c)
    for a, b in zip(out_e, out_c):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads_e, grads_c):
        assert b is not None
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


def _attention_block(q, k, v):
    # A bit of work on either side of the call, so the graph is not just the op.
    out, lse, _ = flash_attn_func(q * 1.5, k, v, causal=True, softmax_scale=0.3, return_attn_probs=True)
    return out.relu() + 1.0, lse


def _qkvpacked_block(qkv):
    return flash_attn_qkvpacked_func(qkv.tanh(), softmax_scale=None, causal=False) * 2.0


def _gqa_inputs():
    torch.manual_seed(0)
    q = torch.randn(2, 7, 4, 16)
    k = torch.randn(2, 11, 2, 16)
    v = torch.randn(2, 11, 2, 16)
    return q, k, v


def test_compile_flash_attn_func_fullgraph():
    q, k, v = _gqa_inputs()
    dout = torch.randn(q.shape)
    eager = _fwd_bwd(_attention_block, (q, k, v), (dout,))
    compiled_fn = torch.compile(_attention_block, backend="aot_eager", fullgraph=True)
    compiled = _fwd_bwd(compiled_fn, (q, k, v), (dout,))
    _assert_same(eager, compiled)
    out, lse = compiled[0]
    assert out.shape == q.shape and lse.shape == (2, 4, 7) and lse.dtype == torch.float32
    # Sanity: the gradients are not trivially zero.
    assert all(g.abs().sum() > 0 for g in compiled[1])


def test_compile_qkvpacked_fullgraph():
    torch.manual_seed(1)
    qkv = torch.randn(2, 9, 3, 2, 8)
    dout = torch.randn(2, 9, 2, 8)
    eager = _fwd_bwd(_qkvpacked_block, (qkv,), (dout,))
    compiled_fn = torch.compile(_qkvpacked_block, backend="aot_eager", fullgraph=True)
    compiled = _fwd_bwd(compiled_fn, (qkv,), (dout,))
    _assert_same(eager, compiled)
    assert compiled[1][0].shape == qkv.shape and compiled[1][0].abs().sum() > 0


def test_compile_recompiles_nothing_on_second_call():
    """A second call with new values of the same shapes reuses the compiled graph."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled_fn = torch.compile(_attention_block, backend=counting_backend, fullgraph=True)
    q, k, v = _gqa_inputs()
    compiled_fn(q, k, v)
    out, lse = compiled_fn(q + 1, k, v)
    assert len(graphs) == 1
    torch.testing.assert_close(out, _attention_block(q + 1, k, v)[0])


@pytest.mark.parametrize("fn,make_inputs", [
    (_attention_block, _gqa_inputs),
    (_qkvpacked_block, lambda: (torch.randn(2, 9, 3, 2, 8),)),
], ids=["func", "qkvpacked"])
def test_exactly_one_graph_no_breaks(fn, make_inputs):
    inputs = make_inputs()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    # Not fullgraph: a break would split the function instead of raising, and is counted.
    torch.compile(fn, backend=counting_backend)(*inputs)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert len(graphs) == 1
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert torch.ops.flashtron.attention_forward.default in targets

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*inputs)
    assert explanation.graph_count == 1
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_forward_output_is_contiguous():
    """The fake implementation promises a contiguous out (q.new_empty(q.shape)); the real one must match,
    or code traced against the fake (e.g. out.view(b, s, h * d)) breaks at run time."""
    q, k, v = _gqa_inputs()
    out, lse = torch.ops.flashtron.attention_forward(q, k, v, 0.25, -1, -1, 0.0, None, None, 0.0, None, False)
    assert out.shape == q.shape and out.is_contiguous(), out.stride()
    assert lse.shape == (2, 4, 7) and lse.is_contiguous(), lse.stride()
    out = flash_attn_func(q, k, v)
    assert out.view(2, 7, 4 * 16).shape == (2, 7, 64)


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck_attention_forward(requires_grad, causal):
    q, k, v = _gqa_inputs()
    args = [t.requires_grad_(requires_grad) for t in (q, k, v)]
    _opcheck(torch.ops.flashtron.attention_forward.default, (*args, 0.25, -1, 0 if causal else -1, 0.0, None, None, 0.0, None, False))


def test_opcheck_attention_with_variants():
    """Window, softcap and an ALiBi tensor through the schema, fake impl and autograd."""
    q, k, v = (torch.randn(1, 9, 4, 16, requires_grad=True) for _ in range(3))
    slopes = torch.rand(4)
    _opcheck(torch.ops.flashtron.attention_forward.default, (q, k, v, 0.3, 3, 0, 2.5, slopes, torch.randn(4, requires_grad=True), 0.0, None, False))


def test_opcheck_attention_forward_strided_inputs():
    """q, k, v as the qkv-packed entry point passes them: views with non-contiguous batch/seq strides."""
    torch.manual_seed(2)
    qkv = torch.randn(2, 6, 3, 2, 8, requires_grad=True)
    q, k, v = qkv.detach().unbind(2)
    _opcheck(torch.ops.flashtron.attention_forward.default, (q, k, v, 0.35, -1, -1, 0.0, None, None, 0.0, None, False))


@pytest.mark.parametrize("causal", [False, True])
def test_opcheck_attention_backward(causal):
    q, k, v = _gqa_inputs()
    window_right = 0 if causal else -1
    out, lse = torch.ops.flashtron.attention_forward(q, k, v, 0.25, -1, window_right, 0.0, None, None, 0.0, None, False)
    dout = torch.randn(q.shape)
    # The backward is not itself differentiable (no double backward), so inputs do not require grad.
    _opcheck(torch.ops.flashtron.attention_backward.default,
             (dout, q, k, v, out, lse, 0.25, -1, window_right, 0.0, None, None, 0.0, None, False))


def test_backward_without_an_output_gradient_returns_none():
    """softmax_lse's gradient is never materialised (it has none), so the formula may see dout None too, as when
    nothing flowed into out: every input's gradient is then None, and no kernel runs."""
    ctx = types.SimpleNamespace(fp8=False, kv_cache=False)
    grads = ops._backward(ctx, None, None)
    assert len(grads) == ops._NUM_INPUTS and all(g is None for g in grads)
    assert len(torch.ops.flashtron.attention_forward.default._schema.arguments) == ops._NUM_INPUTS


def test_custom_op_gradients_match_eager_formula():
    """The autograd formula registered on attention_forward calls attention_backward with the saved tensors."""
    q, k, v = _gqa_inputs()
    dout = torch.randn(q.shape)
    leaves = _leaves(q, k, v)
    out, lse = torch.ops.flashtron.attention_forward(*leaves, 0.25, -1, -1, 0.0, None, None, 0.0, None, False)
    assert not lse.requires_grad
    out.backward(dout)
    dq, dk, dv, *_ = torch.ops.flashtron.attention_backward(dout, q, k, v, out.detach(), lse, 0.25, -1, -1, 0.0, None,
                                                     None, 0.0, None, False)
    for g, expected in zip((t.grad for t in leaves), (dq, dk, dv)):
        torch.testing.assert_close(g, expected, atol=0, rtol=0)
    # And against a float64 reference of softmax(q k^T * scale) v, GQA by repeating k and v.
    q64, k64, v64 = (t.double().requires_grad_(True) for t in (q, k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q64, k64.repeat_interleave(2, 2)) * 0.25
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v64.repeat_interleave(2, 2))
    ref.backward(dout.double())
    torch.testing.assert_close(out.detach().double(), ref.detach(), atol=1e-5, rtol=1e-5)
    for g, r in zip((t.grad for t in leaves), (q64.grad, k64.grad, v64.grad)):
        torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)


class _OpLog(TorchDispatchMode):
    """Records the name of every op dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_calls_skip_the_ops_and_tracers_see_them(monkeypatch):
    """Under a dispatch mode (what FakeTensor, make_fx and FlopCounterMode use) the call goes through both
    custom ops; in plain eager mode it reaches the engine without them (their dispatch costs host time),
    with the same outputs and gradients."""
    q, k, v = _gqa_inputs()
    dout = torch.randn(q.shape)
    attend = lambda q, k, v: flash_attn_func(q, k, v, causal=True, softmax_scale=0.3)  # noqa: E731
    with _OpLog() as log:
        traced = _fwd_bwd(attend, (q, k, v), (dout,))
    assert "flashtron.attention_forward.default" in log.names
    assert "flashtron.attention_backward.default" in log.names

    def refuse(*args, **kwargs):
        raise AssertionError("an eager call went through a custom op")

    monkeypatch.setattr(ops, "attention_forward", refuse)
    monkeypatch.setattr(ops, "attention_backward", refuse)
    _assert_same(traced, _fwd_bwd(attend, (q, k, v), (dout,)))
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v), traced[0][0], atol=0, rtol=0)


def test_compile_with_dropout_fullgraph():
    """The dropout seed is drawn with torch.randint inside the traced function: still one graph."""
    q, k, v = (torch.randn(1, 64, 2, 16, requires_grad=True) for _ in range(3))

    def fn(q, k, v):
        return flash_attn_func(q, k, v, dropout_p=0.3, causal=True, return_attn_probs=True)

    out, lse, s_dmask = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v)
    assert sum(counters["graph_break"].values()) == 0
    # The compiled call is exact given its own mask.
    keep = (s_dmask >= 0).float()
    expected = torch.einsum("bhqk,bkhd->bqhd", s_dmask.abs() * keep / 0.7, v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_float_arguments_that_change_stay_in_one_graph_each():
    """softmax_scale and softcap traced as symbolic floats (dynamic=True, or a float that changed between calls):
    their range checks compare rather than call math.isfinite, which dynamo cannot put in a graph."""
    q, k, v = (torch.randn(1, 24, 2, 16) for _ in range(3))
    for dynamic in (True, None):
        torch._dynamo.reset()
        compiled = torch.compile(lambda q, k, v, s, c: flash_attn_func(q, k, v, softmax_scale=s, softcap=c,
                                                                        causal=True),
                                 fullgraph=True, backend="aot_eager", dynamic=dynamic)
        for scale, softcap in ((0.3, 0.0), (0.25, 5.0), (0.2, 3.0)):
            expected = flash_attn_func(q, k, v, softmax_scale=scale, softcap=softcap, causal=True)
            torch.testing.assert_close(compiled(q, k, v, scale, softcap), expected, atol=1e-6, rtol=1e-6)


def test_compiled_calls_check_index_values_when_they_run():
    """Tracing sees fake tensors, so the public functions cannot read cu_seqlens or cache_seqlens then: the ops
    check them (CPU tensors) when the graph runs, as eager calls do (out-of-bounds reads before)."""
    from flashtron import flash_attn_varlen_func, flash_attn_with_kvcache
    q = torch.randn(5, 2, 8)
    varlen = torch.compile(lambda q, cu: flash_attn_varlen_func(q, q, q, cu, cu, 6, 6), fullgraph=True,
                           backend="aot_eager")
    with pytest.raises(ValueError, match="cu_seqlens_q must end at the number of tokens"):
        varlen(q, torch.tensor([0, 3, 9], dtype=torch.int32))
    good = torch.tensor([0, 3, 5], dtype=torch.int32)
    torch.testing.assert_close(varlen(q, good), flash_attn_varlen_func(q, q, q, good, good, 6, 6))

    k_cache, v_cache = torch.randn(2, 8, 2, 8), torch.randn(2, 8, 2, 8)
    q1, new = torch.randn(2, 1, 2, 8), torch.randn(2, 1, 2, 8)
    decode = torch.compile(lambda q, kc, vc, k, lengths: flash_attn_with_kvcache(q, kc, vc, k, k,
                                                                                 cache_seqlens=lengths),
                           fullgraph=True, backend="aot_eager")
    before = k_cache.clone()
    with pytest.raises(ValueError, match="cache_seqlens"):
        decode(q1, k_cache, v_cache, new, torch.tensor([3, 8], dtype=torch.int32))  # row 1 has no room
    assert torch.equal(k_cache, before)
    decode(q1, k_cache, v_cache, new, torch.tensor([3, 6], dtype=torch.int32))
    assert torch.equal(k_cache[0, 3], new[0, 0]) and torch.equal(k_cache[1, 6], new[1, 0])

    k_pages = torch.randn(4, 4, 2, 8)
    paged = torch.compile(lambda q, kc, table: flash_attn_with_kvcache(q, kc, kc, cache_seqlens=6, block_table=table),
                          fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match="block_table entries"):
        paged(q1, k_pages, torch.tensor([[0, 1], [2, 9]], dtype=torch.int32))


def test_second_derivatives_raise_rather_than_mislead():
    """The backward is once-differentiable: a gradient penalty through attention raises (the CPU path used to return
    a partial second derivative, the kernels none at all)."""
    q, k, v = (torch.randn(1, 6, 2, 8, requires_grad=True) for _ in range(3))
    out = flash_attn_func(q, k, v, causal=True)
    (grad_q, ) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (out.sum() + grad_q.pow(2).sum()).backward()
    qkv = torch.randn(1, 6, 3, 2, 8, requires_grad=True)
    out = flash_attn_qkvpacked_func(qkv)
    (grad_qkv, ) = torch.autograd.grad(out.pow(2).sum(), qkv, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad_qkv.pow(2).sum().backward()


@pytest.mark.parametrize("transform", ["jvp", "forward_ad", "grad", "jacrev"])
def test_unsupported_differentiation_is_refused(transform):
    """Forward mode dropped its tangents silently (zeros through the op, None through the kernels), and torch.func's
    grad-style transforms failed inside torch's custom-op autograd with a message about autograd.Function."""
    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))
    attend = lambda q: flash_attn_func(q, k, v).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="reverse mode"):
        if transform == "jvp":
            torch.func.jvp(attend, (q, ), (torch.ones_like(q), ))
        elif transform == "forward_ad":
            import torch.autograd.forward_ad as forward_ad
            with forward_ad.dual_level():
                attend(forward_ad.make_dual(q, torch.ones_like(q)))
        else:
            getattr(torch.func, transform)(attend)(q)


def test_alibi_slopes_get_no_gradient_on_any_path():
    """flash-attn gives ALiBi's slopes no gradient; the CPU path used to, when nothing else required one."""
    q, k, v = (torch.randn(1, 6, 2, 8) for _ in range(3))
    slopes = torch.rand(2, requires_grad=True)
    out = flash_attn_func(q, k, v, alibi_slopes=slopes, causal=True)
    assert not out.requires_grad
    out = flash_attn_func(q.requires_grad_(), k, v, alibi_slopes=slopes, causal=True)
    out.sum().backward()
    assert slopes.grad is None and q.grad is not None
