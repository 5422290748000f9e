"""flash_attn_func(attn_bias=...): an additive bias inside the kernels, forward and backward.

The bias (any shape that broadcasts to (B, H, Sq, Sk)) joins the logits after soft-capping and
ALiBi; -inf entries mask.  Out, lse and the gradients of q, k, v and the bias itself are held to
flash-attn's rule against the float64 oracle, for every broadcast pattern, with the other
variants, and rows the bias masks entirely give output 0, lse +inf and finite gradients.
"""

import math

import pytest
import torch

from flashtron import flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func
from reference import assert_within_rule, attention_reference, max_error
from test_flash_attn import DTYPES

BATCH, SEQLEN_Q, SEQLEN_K, HEADS, HEADS_KV, HEAD_DIM = 2, 37, 29, 4, 2, 24

# Shapes a user passes: full, per-head shared across the batch, key padding, one 2-D matrix,
# a per-head 3-D bias, and one scalar per (batch, head).
BIAS_SHAPES = [(BATCH, HEADS, SEQLEN_Q, SEQLEN_K), (1, HEADS, SEQLEN_Q, SEQLEN_K), (BATCH, 1, 1, SEQLEN_K),
               (SEQLEN_Q, SEQLEN_K), (HEADS, SEQLEN_Q, SEQLEN_K), (BATCH, HEADS, 1, 1)]


def random_bias(shape, dtype, masked_fraction=0.1, device="cpu"):
    bias = torch.randn(shape, device=device) * 2
    mask = torch.rand(shape, device=device) < masked_fraction
    return bias.masked_fill(mask, -math.inf).to(dtype)


def inputs(dtype, seqlen_q=SEQLEN_Q, seqlen_k=SEQLEN_K, device="cpu", batch=BATCH, heads=HEADS, heads_kv=HEADS_KV,
           head_dim=HEAD_DIM):
    make = lambda s, h: torch.randn(batch, s, h, head_dim, dtype=dtype, device=device, requires_grad=True)
    return make(seqlen_q, heads), make(seqlen_k, heads_kv), make(seqlen_k, heads_kv)


def check_with_bias(q, k, v, bias, causal=False, **variants):
    """One call with a bias that requires grad: out, lse and all four gradients within the rule."""
    bias = bias.detach().requires_grad_()
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, attn_bias=bias, return_attn_probs=True, **variants)
    assert out.shape == q.shape and out.dtype == q.dtype
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v, bias), dout)
    assert grads[3].shape == bias.shape and grads[3].dtype == bias.dtype

    results = {}
    for upcast in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, bias)]
        ref_out, ref_lse = attention_reference(*leaves[:3], causal=causal, upcast=upcast, attn_bias=leaves[3],
                                               window=variants.get("window_size", (-1, -1)),
                                               softcap=variants.get("softcap", 0.0),
                                               alibi_slopes=variants.get("alibi_slopes"),
                                               sinks=variants.get("sinks"))
        ref_grads = torch.autograd.grad(ref_out, leaves, dout.to(ref_out.dtype))
        results[upcast] = (ref_out, ref_lse, [g.nan_to_num(0.0) for g in ref_grads])
    (truth_out, truth_lse, truth_grads), (plain_out, _, plain_grads) = results[True], results[False]
    assert_within_rule("out", out, truth_out, plain_out, 2)
    # A broadcast bias's gradient is a sum over the broadcast dims, kept in fp32 and rounded once to the
    # bias's dtype: up to half a unit of its last place, relative to the sum's size, which PyTorch's
    # differently rounded computation can beat by chance on some element (as for dsinks).
    reduced = bias.numel() < q.shape[0] * q.shape[2] * q.shape[1] * k.shape[1] and bias.dtype != torch.float32
    for name, ours, truth, plain in zip(("dq", "dk", "dv", "dbias"), grads, truth_grads, plain_grads):
        slack = torch.finfo(bias.dtype).eps if name == "dbias" and reduced else 1e-5
        assert_within_rule(name, ours, truth, plain, 3, slack=slack)
    sees_nothing = torch.isinf(truth_lse)
    assert torch.equal(torch.isinf(lse), sees_nothing), "lse must be +inf exactly where a row sees no key"
    assert max_error(lse[~sees_nothing], truth_lse[~sees_nothing]) < 1e-4
    empty_rows = sees_nothing.expand(lse.shape).permute(0, 2, 1)  # (B, Sq, H): out without the head dim
    assert (out[empty_rows] == 0).all(), "rows that see no key must give output 0"


@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_bias_shapes_match_oracle(shape, dtype):
    check_with_bias(*inputs(dtype), random_bias(shape, dtype), causal=shape[-1] == SEQLEN_K and len(shape) == 2)


@pytest.mark.parametrize("variants", [
    dict(causal=True, softcap=3.0),
    dict(window_size=(9, 4), alibi_slopes=torch.rand(HEADS) * 0.3),
    dict(causal=True, sinks=torch.randn(HEADS)),
], ids=["causal-softcap", "window-alibi", "causal-sinks"])
def test_bias_with_other_variants(variants):
    check_with_bias(*inputs(torch.float16), random_bias((BATCH, HEADS, SEQLEN_Q, SEQLEN_K), torch.float16),
                    **variants)


def test_rows_masked_by_the_bias_give_zero_and_finite_gradients():
    q, k, v = inputs(torch.float32)
    bias = random_bias((BATCH, 1, SEQLEN_Q, SEQLEN_K), torch.float32)
    bias[:, :, 5] = -math.inf
    bias[1, :, 30:] = -math.inf
    check_with_bias(q, k, v, bias, sinks=torch.randn(HEADS))
    out, lse, _ = flash_attn_func(q, k, v, attn_bias=bias, return_attn_probs=True)
    assert (out[:, 5] == 0).all() and (out[1, 30:] == 0).all()
    assert torch.isinf(lse[:, :, 5]).all() and (lse[:, :, 5] > 0).all()


def test_bias_without_grad_and_packed_forms():
    dtype = torch.float32
    qkv = torch.randn(BATCH, SEQLEN_Q, 3, HEADS, HEAD_DIM, dtype=dtype, requires_grad=True)
    bias = random_bias((HEADS, SEQLEN_Q, SEQLEN_Q), dtype)
    out = flash_attn_qkvpacked_func(qkv, attn_bias=bias)
    q, k, v = qkv.unbind(2)
    expected, _ = attention_reference(q, k, v, attn_bias=bias)
    torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=2e-5)
    out.sum().backward()
    assert bias.grad is None and torch.isfinite(qkv.grad).all()

    kv = qkv[:, :SEQLEN_K, 1:].detach()
    out = flash_attn_kvpacked_func(q.detach(), kv, attn_bias=bias[..., :SEQLEN_K], causal=True)
    expected, _ = attention_reference(q, kv[:, :, 0], kv[:, :, 1], causal=True, attn_bias=bias[..., :SEQLEN_K])
    torch.testing.assert_close(out, expected.float(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("packing", ["qkv", "kv"])
def test_packed_forms_give_the_bias_its_gradient(packing):
    """The packed forms' Function takes the packed tensor and its dim before attention's inputs: the bias's gradient
    must still be asked for (it was silently None)."""
    dtype = torch.float32
    qkv = torch.randn(BATCH, SEQLEN_Q, 3, HEADS, HEAD_DIM, dtype=dtype)
    bias = random_bias((1, HEADS, SEQLEN_Q, SEQLEN_Q), dtype, masked_fraction=0.0).requires_grad_()
    dout = torch.randn(BATCH, SEQLEN_Q, HEADS, HEAD_DIM, dtype=dtype)
    packed = (qkv if packing == "qkv" else qkv[:, :, 1:]).clone().requires_grad_()
    q = qkv[:, :, 0].clone().requires_grad_()
    if packing == "qkv":
        out = flash_attn_qkvpacked_func(packed, attn_bias=bias, causal=True)
    else:
        out = flash_attn_kvpacked_func(q, packed, attn_bias=bias, causal=True)
    out.backward(dout)
    parts = [t.detach().requires_grad_() for t in qkv.unbind(2)]
    bias_ref = bias.detach().requires_grad_()
    flash_attn_func(*parts, attn_bias=bias_ref, causal=True).backward(dout)
    assert bias.grad is not None
    torch.testing.assert_close(bias.grad, bias_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.grad.unbind(2)[-1], parts[2].grad, atol=1e-5, rtol=1e-5)


def test_bias_under_torch_compile():
    q, k, v = inputs(torch.float32)
    bias = random_bias((BATCH, 1, SEQLEN_Q, SEQLEN_K), torch.float32).requires_grad_()
    compiled = torch.compile(lambda q, k, v, b: flash_attn_func(q, k, v, attn_bias=b), fullgraph=True,
                             backend="aot_eager")
    out = compiled(q, k, v, bias)
    out.sum().backward()
    expected = flash_attn_func(q.detach(), k.detach(), v.detach(), attn_bias=bias.detach())
    torch.testing.assert_close(out, expected)
    assert bias.grad.shape == bias.shape and torch.isfinite(bias.grad).all()


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(BATCH, HEADS, SEQLEN_Q, SEQLEN_K + 1), ValueError, "attn_bias must broadcast"),
    (torch.zeros(3, HEADS, SEQLEN_Q, SEQLEN_K), ValueError, "attn_bias must broadcast"),
    (torch.zeros(1, 1, BATCH, HEADS, SEQLEN_Q, SEQLEN_K), ValueError, "attn_bias must broadcast"),
    (torch.zeros(SEQLEN_Q, SEQLEN_K, dtype=torch.bool), TypeError, "attn_bias must be float16"),
    (torch.zeros(SEQLEN_Q, SEQLEN_K, dtype=torch.float64), TypeError, "attn_bias must be float16"),
    ("bias", TypeError, "attn_bias must be a torch.Tensor"),
])
def test_bad_bias_is_rejected(bad, error, match):
    q, k, v = inputs(torch.float32)
    with pytest.raises(error, match=match):
        flash_attn_func(q, k, v, attn_bias=bad)
