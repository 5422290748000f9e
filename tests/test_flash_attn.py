"""flash_attn_func and its packed forms against the float64 oracle, on the CPU.

Run plainly, CPU tensors take the PyTorch blockwise path; with
TRITON_INTERPRET=1 they run the Triton kernels under the interpreter (small
tiles, so every loop has masked and unmasked segments at these sizes).  The
same checks run at GPU sizes in test_gpu.py.
"""

import math

import pytest
import torch

from flashtron import flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func
from reference import assert_within_rule, attention_reference, max_error, visible_mask

DTYPES = [torch.float16, torch.bfloat16, torch.float32]

# (batch, seqlen_q, seqlen_k, num_heads, num_heads_kv, head_dim): every odd size of the issue
# appears, with MHA, GQA and MQA, Sq < Sk and Sq > Sk (rows that see nothing under causal).
SHAPES = [
    (2, 1, 1, 4, 4, 8),
    (2, 17, 17, 6, 2, 40),
    (1, 113, 203, 3, 1, 59),
    (2, 203, 113, 4, 4, 64),
    (1, 257, 257, 2, 1, 96),
    (2, 1, 257, 4, 2, 111),
    (1, 113, 17, 2, 2, 128),
    (1, 17, 113, 2, 1, 256),
]


def random_inputs(shape, dtype, device="cpu"):
    batch, seqlen_q, seqlen_k, num_heads, num_heads_kv, head_dim = shape
    make = lambda s, h: torch.randn(batch, s, h, head_dim, dtype=dtype, device=device, requires_grad=True)
    return make(seqlen_q, num_heads), make(seqlen_k, num_heads_kv), make(seqlen_k, num_heads_kv)


def _differentiable(q, k, v, variants):
    sinks = variants.get("sinks")
    return (q, k, v) + ((sinks,) if sinks is not None and sinks.requires_grad else ())


def reference_and_grads(q, k, v, dout, causal, upcast, softmax_scale=None, **variants):
    leaves = [t.detach().clone().requires_grad_() for t in _differentiable(q, k, v, variants)]
    sinks = variants.get("sinks")
    if sinks is not None:
        sinks = leaves[3] if len(leaves) > 3 else sinks
        sinks = sinks if upcast else sinks.to(q.dtype)
    out, lse = attention_reference(*leaves[:3], causal=causal, upcast=upcast, softmax_scale=softmax_scale,
                                   window=variants.get("window_size", (-1, -1)),
                                   softcap=variants.get("softcap", 0.0),
                                   alibi_slopes=variants.get("alibi_slopes"), sinks=sinks,
                                   dropout_keep=variants.get("dropout_keep"), dropout_p=variants.get("dropout_p", 0.0))
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return out, lse, grads


def sink_gradient_slack(name, dtype):
    """dsinks sums p_sink * delta over every row, and delta comes from the output rounded to the
    input dtype (as in flash-attn): one unit roundoff of that dtype, relative to the sum's size,
    which a plain PyTorch computation can avoid by chance.  Other gradients: the default slack."""
    return torch.finfo(dtype).eps if name == "dsinks" and dtype != torch.float32 else 1e-5


def check_against_oracle(q, k, v, causal, softmax_scale=None, **variants):
    """The whole contract of one call: out, lse and gradients within flash-attn's rule.

    `variants` are flash_attn_func keywords (window_size, softcap, alibi_slopes)."""
    out, lse, s_dmask = flash_attn_func(q, k, v, causal=causal, softmax_scale=softmax_scale,
                                        return_attn_probs=True, **variants)
    if variants.get("dropout_p", 0.0) > 0:
        # The reference applies the very mask the call used, read off S_dmask's signs.
        assert s_dmask.shape == (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
        variants = dict(variants, dropout_keep=s_dmask.detach().double() >= 0)
    else:
        assert s_dmask is None
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, _differentiable(q, k, v, variants), dout)

    truth_out, truth_lse, truth_grads = reference_and_grads(q, k, v, dout, causal, True, softmax_scale, **variants)
    plain_out, _, plain_grads = reference_and_grads(q, k, v, dout, causal, False, softmax_scale, **variants)
    assert_within_rule("out", out, truth_out, plain_out, 2)
    for name, ours, truth, plain in zip(("dq", "dk", "dv", "dsinks"), grads, truth_grads, plain_grads):
        assert ours.shape == truth.shape and ours.dtype == (q.dtype if name != "dsinks" else torch.float32)
        assert_within_rule(name, ours, truth, plain, 3, slack=sink_gradient_slack(name, q.dtype))

    sees_nothing = torch.isinf(truth_lse)
    assert torch.equal(torch.isinf(lse), sees_nothing), "lse must be +inf exactly where a row sees no key"
    assert (lse[sees_nothing] > 0).all()
    assert max_error(lse[~sees_nothing], truth_lse[~sees_nothing]) < 1e-4
    rows_empty = sees_nothing[0, 0]
    assert (out[:, rows_empty] == 0).all(), "rows that see no key must give output 0"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_matches_oracle(shape, causal, dtype):
    check_against_oracle(*random_inputs(shape, dtype), causal)


def test_causal_rows_that_see_nothing_are_finite():
    # Sq > Sk, causal: the first Sq - Sk rows see no key.
    q, k, v = random_inputs((1, 40, 9, 2, 1, 16), torch.float16)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert (out[:, :31] == 0).all() and torch.isinf(lse[..., :31]).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[..., 31:]).all()
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :31] == 0).all()


def test_mask_alignment_is_bottom_right():
    # One visible key per row at the diagonal offset: out equals the value of the key j = i + Sk - Sq.
    q = torch.randn(1, 5, 1, 16)
    k = torch.randn(1, 9, 1, 16)
    v = torch.randn(1, 9, 1, 16)
    out = flash_attn_func(q, k, v, causal=True, softmax_scale=0.0)
    # With scale 0 every visible key weighs the same: row i averages keys 0 .. i + 4.
    expected = torch.stack([v[0, :i + 5, 0].mean(0) for i in range(5)])
    torch.testing.assert_close(out[0, :, 0], expected, atol=1e-6, rtol=1e-5)
    assert visible_mask(5, 9, -1, 0, "cpu").sum(-1).tolist() == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("scale", [0.3, 1.7, 0.0, -0.5])
def test_custom_softmax_scale(scale):
    check_against_oracle(*random_inputs((1, 33, 47, 2, 2, 24), torch.float32), True, softmax_scale=scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_qkvpacked_matches_unpacked(dtype):
    qkv = torch.randn(2, 37, 3, 4, 32, dtype=dtype, requires_grad=True)
    out = flash_attn_qkvpacked_func(qkv, causal=True)
    dout = torch.randn_like(out)
    (grad_packed,) = torch.autograd.grad(out, qkv, dout)
    q, k, v = (qkv[:, :, i].detach().clone().requires_grad_() for i in range(3))
    out_ref = flash_attn_func(q, k, v, causal=True)
    grads = torch.autograd.grad(out_ref, (q, k, v), dout)
    assert torch.equal(out, out_ref)
    assert torch.equal(grad_packed, torch.stack(grads, dim=2))


def test_kvpacked_matches_unpacked_with_gqa():
    q = torch.randn(2, 21, 6, 40, dtype=torch.float16, requires_grad=True)
    kv = torch.randn(2, 30, 2, 2, 40, dtype=torch.float16, requires_grad=True)
    out, lse, _ = flash_attn_kvpacked_func(q, kv, return_attn_probs=True)
    dout = torch.randn_like(out)
    dq, dkv = torch.autograd.grad(out, (q, kv), dout)
    k, v = (kv[:, :, i].detach().clone().requires_grad_() for i in range(2))
    q2 = q.detach().clone().requires_grad_()
    out_ref = flash_attn_func(q2, k, v)
    grads = torch.autograd.grad(out_ref, (q2, k, v), dout)
    assert torch.equal(out, out_ref)
    assert torch.equal(dq, grads[0]) and torch.equal(dkv, torch.stack(grads[1:], dim=2))


@pytest.mark.parametrize("form", ["qkv", "kv", "varlen_qkv", "varlen_kv", "qkv_from_a_product", "qkv_copied"])
def test_packed_forms_write_their_gradient_whole(form):
    """The packed forms' backward writes the packed tensor's gradient as one tensor (ops._PackedAttention), not as
    one zero-filled packed-size tensor per part summed by autograd; the values are the unpacked call's gradients
    stacked.  A packed tensor whose parts must be copied on the way in (no unit stride on the head dim) takes the
    unpacked path."""
    from flashtron import flash_attn_varlen_func, flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func
    varlen = form.startswith("varlen")
    lead = (40,) if varlen else (2, 20)
    dim = len(lead)
    parts = 2 if form.endswith("kv") else 3
    if form == "qkv_from_a_product":  # not a leaf: autograd adds its gradient into a buffer, not into .grad
        weight = torch.randn(12, 3 * 2 * 16, requires_grad=True)
        leaf = torch.randn(*lead, 12)
        packed = (leaf @ weight).view(*lead, 3, 2, 16)
    elif form == "qkv_copied":
        packed = torch.randn(*lead, 3, 16, 2).transpose(-1, -2).requires_grad_()
    else:
        packed = torch.randn(*lead, parts, 2, 16, requires_grad=True)
    q = torch.randn(*lead, 4, 16, requires_grad=True) if parts == 2 else None
    cu = torch.tensor([0, 13, 13, 40], dtype=torch.int32)
    if varlen:
        out = (flash_attn_varlen_qkvpacked_func(packed, cu, 27, causal=True) if parts == 3
               else flash_attn_varlen_kvpacked_func(q, packed, cu, cu, 27, 27, causal=True))
    else:
        out = (flash_attn_qkvpacked_func(packed, causal=True) if parts == 3
               else flash_attn_kvpacked_func(q, packed, causal=True))
    expected_node = "_AttentionBackward" if form == "qkv_copied" else "_PackedAttentionBackward"
    assert type(out.grad_fn).__name__ == expected_node
    dout = torch.randn_like(out)
    leaves = [packed] + ([q] if q is not None else [])
    grads = torch.autograd.grad(out, leaves, dout)
    unpacked = [t.detach().clone().requires_grad_() for t in ([q] if q is not None else []) + list(packed.unbind(dim))]
    if varlen:
        ref = flash_attn_varlen_func(*unpacked, cu, cu, 27, 27, causal=True)
    else:
        ref = flash_attn_func(*unpacked, causal=True)
    ref_grads = torch.autograd.grad(ref, unpacked, dout)
    assert torch.equal(out, ref)
    assert torch.equal(grads[0], torch.stack(ref_grads[-parts:], dim=dim))
    if q is not None:
        assert torch.equal(grads[1], ref_grads[0])


def test_gqa_gradients_sum_over_the_group():
    # MQA with identical query heads: dk and dv equal the per-head gradients summed.
    q1 = torch.randn(1, 19, 1, 16, dtype=torch.float64).float()
    q = q1.expand(1, 19, 3, 16).contiguous().requires_grad_()
    k = torch.randn(1, 23, 1, 16, requires_grad=True)
    v = torch.randn(1, 23, 1, 16, requires_grad=True)
    out = flash_attn_func(q, k, v, causal=True)
    out.backward(torch.ones_like(out))
    k1, v1 = (t.detach().clone().requires_grad_() for t in (k, v))
    out1 = flash_attn_func(q1.detach().clone(), k1, v1, causal=True)
    out1.backward(torch.ones_like(out1) * 3)
    torch.testing.assert_close(k.grad, k1.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v.grad, v1.grad, rtol=1e-5, atol=1e-5)


def test_strided_inputs_are_copied_not_rejected():
    q = torch.randn(2, 29, 32, 3).transpose(-1, -2)  # head dim has stride 3
    k = torch.randn(2, 3, 31, 32).transpose(1, 2)  # seq/head swapped: unit head-dim stride, odd strides
    v = torch.randn(2, 31, 3, 64)[..., ::2]       # every other element: stride 2 on the head dim
    assert q.stride(-1) != 1 and v.stride(-1) != 1
    out = flash_attn_func(q, k, v, causal=True)
    expected = flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert torch.equal(out, expected)
    truth, _ = attention_reference(q, k, v, causal=True)
    assert max_error(out, truth) < 1e-5


def test_large_score_magnitudes_do_not_overflow():
    # Scores around +-1e4: the online softmax must subtract the running max.
    q = torch.randn(1, 50, 2, 32) * 30
    k = torch.randn(1, 70, 2, 32) * 30
    v = torch.randn(1, 70, 2, 32)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    truth, truth_lse = attention_reference(q, k, v, causal=True)
    plain, _ = attention_reference(q, k, v, causal=True, upcast=False)
    assert torch.isfinite(lse).all()
    # Scores of ~1e4 carry fp32 rounding of ~1e4 * 2**-24 ~ 6e-4 in the exponent, in any fp32 engine;
    # a plain PyTorch run can avoid part of it by chance, so the rule gets a matching slack.
    assert_within_rule("out", out, truth, plain, 2, slack=1e-4)
    assert max_error(lse, truth_lse) <= 1e-5 * truth_lse.abs().max().item()


def test_fresh_inputs_each_call_give_different_outputs():
    # Guards against an engine that ignores its inputs (e.g. returns a cached tensor).
    a = flash_attn_func(*random_inputs((1, 16, 16, 2, 2, 16), torch.float32)[:3])
    b = flash_attn_func(*random_inputs((1, 16, 16, 2, 2, 16), torch.float32)[:3])
    assert not torch.equal(a, b) and not math.isnan(a.sum().item())
