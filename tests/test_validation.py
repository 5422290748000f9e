"""Argument validation of the public API, and the edge cases that must work.

Bad input to flash_attn_func, flash_attn_kvpacked_func and
flash_attn_qkvpacked_func must raise a clear error that names the offending
argument (TypeError for a wrong type, ValueError for a wrong value or shape,
NotImplementedError for a valid request that is not built yet); valid but
unusual input (empty batch, empty sequences, head dims 1 and 256,
non-contiguous layouts) must run and give the right answer.

Runs on the CPU, in plain mode (blockwise PyTorch path) and under
TRITON_INTERPRET=1 (the Triton kernels in Triton's interpreter); sizes are tiny.
"""

import math

import numpy as np
import pytest
import torch

from flashtron import flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func
from reference import attention_reference

B, S, H, D = 2, 5, 2, 8


def _randn(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device)


def _qkv(b=B, sq=S, sk=S, h=H, hk=H, d=D, dtype=torch.float32, device="cpu"):
    return (_randn(b, sq, h, d, dtype=dtype, device=device),
            _randn(b, sk, hk, d, dtype=dtype, device=device),
            _randn(b, sk, hk, d, dtype=dtype, device=device))


# The three entry points, each called with unpacked (q, k, v) of equal shapes.
def _call_func(q, k, v, **kw):
    return flash_attn_func(q, k, v, **kw)


def _call_kvpacked(q, k, v, **kw):
    return flash_attn_kvpacked_func(q, torch.stack([k, v], dim=2), **kw)


def _call_qkvpacked(q, k, v, **kw):
    return flash_attn_qkvpacked_func(torch.stack([q, k, v], dim=2), **kw)


ENTRY_POINTS = pytest.mark.parametrize(
    "call", [_call_func, _call_kvpacked, _call_qkvpacked], ids=["func", "kvpacked", "qkvpacked"])


def _reference(q, k, v, softmax_scale=None, causal=False):
    return attention_reference(q, k, v, causal=causal, softmax_scale=softmax_scale)


def _grads(fn, tensors, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward(dout)
    return out.detach(), [t.grad for t in leaves]


# ---------------------------------------------------------------------------
# Tensors: type, device, dtype, rank, shapes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, [[1.0]], np.zeros((B, S, H, D), dtype=np.float32), 3.0],
                         ids=["None", "list", "ndarray", "float"])
@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_non_tensor_qkv(name, bad):
    args = dict(zip("qkv", _qkv()))
    args[name] = bad
    with pytest.raises(TypeError, match=rf"^{name} must be a torch\.Tensor"):
        flash_attn_func(args["q"], args["k"], args["v"])


def test_non_tensor_packed():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"^qkv must be a torch\.Tensor"):
        flash_attn_qkvpacked_func(torch.stack([q, k, v], 2).numpy())
    with pytest.raises(TypeError, match=r"^kv must be a torch\.Tensor"):
        flash_attn_kvpacked_func(q, [k, v])
    with pytest.raises(TypeError, match=r"^q must be a torch\.Tensor"):
        flash_attn_kvpacked_func(q.numpy(), torch.stack([k, v], 2))


@pytest.mark.parametrize("meta", ["q", "k", "v"])
def test_mixed_devices(meta):
    args = dict(zip("qkv", _qkv()))
    args[meta] = args[meta].to("meta")
    with pytest.raises(ValueError, match=rf"one device.*{meta} on meta"):
        flash_attn_func(args["q"], args["k"], args["v"])


def test_mixed_devices_kvpacked():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"one device.*q on cpu, kv on meta"):
        flash_attn_kvpacked_func(q, torch.stack([k, v], 2).to("meta"))
    with pytest.raises(ValueError, match=r"one device.*q on meta, kv on cpu"):
        flash_attn_kvpacked_func(q.to("meta"), torch.stack([k, v], 2))


@ENTRY_POINTS
def test_unsupported_device(call):
    q, k, v = _qkv(device="meta")
    with pytest.raises(NotImplementedError, match=r"device meta"):
        call(q, k, v)


@pytest.mark.parametrize("name", ["k", "v"])
@pytest.mark.parametrize("q_dtype,other_dtype", [(torch.float32, torch.float16), (torch.float16, torch.bfloat16),
                                                 (torch.bfloat16, torch.float32)])
def test_mismatched_dtypes(name, q_dtype, other_dtype):
    args = dict(zip("qkv", _qkv(dtype=q_dtype)))
    args[name] = args[name].to(other_dtype)
    with pytest.raises(TypeError, match=rf"^{name} has dtype {other_dtype}, but q has dtype {q_dtype}"):
        flash_attn_func(args["q"], args["k"], args["v"])


def test_mismatched_dtypes_kvpacked():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"^kv has dtype torch\.float16, but q has dtype torch\.float32"):
        flash_attn_kvpacked_func(q, torch.stack([k, v], 2).half())


@ENTRY_POINTS
@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.int8, torch.complex64])
def test_unsupported_dtype(call, dtype):
    q, k, v = (t.to(dtype) for t in _qkv())
    name = "qkv" if call is _call_qkvpacked else "q"
    with pytest.raises(TypeError, match=rf"^{name} has dtype {dtype}; supported dtypes"):
        call(q, k, v)


@pytest.mark.parametrize("name", ["q", "k", "v"])
@pytest.mark.parametrize("rank", [3, 5])
def test_wrong_rank(name, rank):
    args = dict(zip("qkv", _qkv()))
    t = args[name]
    args[name] = t.flatten(2) if rank == 3 else t.unsqueeze(0)
    with pytest.raises(ValueError, match=rf"^{name} must have 4 dimensions"):
        flash_attn_func(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("shape", [(B, S, 3, H * D), (1, B, S, 3, H, D), (B, S, 2, H, D), (B, S, 4, H, D),
                                   (B, S, 1, H, D)])
def test_qkvpacked_bad_shape(shape):
    with pytest.raises(ValueError, match=r"^qkv must have"):
        flash_attn_qkvpacked_func(_randn(*shape))


@pytest.mark.parametrize("shape", [(B, S, 2, H * D), (1, B, S, 2, H, D), (B, S, 3, H, D), (B, S, 1, H, D)])
def test_kvpacked_bad_shape(shape):
    q, _, _ = _qkv()
    with pytest.raises(ValueError, match=r"^kv must have"):
        flash_attn_kvpacked_func(q, _randn(*shape))


def test_kvpacked_bad_q_rank():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"^q must have 4 dimensions"):
        flash_attn_kvpacked_func(q.flatten(2), torch.stack([k, v], 2))


@pytest.mark.parametrize("shapes", [
    ((2, S, H, D), (3, S, H, D), (3, S, H, D)),
    ((2, S, H, D), (2, S, H, D), (3, S, H, D)),
    ((2, S, H, D), (1, S, H, D), (2, S, H, D)),
], ids=["k_and_v", "v_only", "k_only"])
def test_mismatched_batch(shapes):
    q, k, v = (_randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=r"^batch sizes differ"):
        flash_attn_func(q, k, v)


def test_mismatched_batch_kvpacked():
    with pytest.raises(ValueError, match=r"^batch sizes differ"):
        flash_attn_kvpacked_func(_randn(2, S, H, D), _randn(3, S, 2, H, D))


@pytest.mark.parametrize("k_shape,v_shape", [((B, 5, H, D), (B, 6, H, D)), ((B, 5, H, D), (B, 5, 1, D)),
                                             ((B, 6, 1, D), (B, 5, 1, D))],
                         ids=["seqlen", "heads", "seqlen_gqa"])
def test_mismatched_k_v(k_shape, v_shape):
    with pytest.raises(ValueError, match=r"^k and v must agree"):
        flash_attn_func(_randn(B, 7, H, D), _randn(*k_shape), _randn(*v_shape))


@pytest.mark.parametrize("dq,dk,dv", [(8, 16, 16), (16, 8, 16), (16, 16, 8), (8, 8, 16)])
def test_mismatched_head_dims(dq, dk, dv):
    with pytest.raises(ValueError, match=r"^head dims differ"):
        flash_attn_func(_randn(B, S, H, dq), _randn(B, S, H, dk), _randn(B, S, H, dv))


def test_mismatched_head_dims_kvpacked():
    with pytest.raises(ValueError, match=r"^head dims differ"):
        flash_attn_kvpacked_func(_randn(B, S, H, 8), _randn(B, S, 2, H, 16))


@pytest.mark.parametrize("h,hk", [(3, 2), (2, 4), (5, 3), (4, 0)])
def test_heads_not_multiple(h, hk):
    q, k, v = _qkv(h=h, hk=hk)
    with pytest.raises(ValueError, match=r"number of query heads.*multiple.*key/value heads"):
        flash_attn_func(q, k, v)


def test_heads_not_multiple_kvpacked():
    with pytest.raises(ValueError, match=r"number of query heads.*multiple"):
        flash_attn_kvpacked_func(_randn(B, S, 3, D), _randn(B, S, 2, 2, D))


@ENTRY_POINTS
def test_head_dim_zero(call):
    q, k, v = _qkv(d=0)
    with pytest.raises(ValueError, match=r"^head_dim .*at least 1"):
        call(q, k, v)


@ENTRY_POINTS
@pytest.mark.parametrize("d", [257, 512])
def test_head_dim_too_large(call, d):
    q, k, v = _qkv(b=1, sq=2, sk=2, h=1, hk=1, d=d)
    with pytest.raises(NotImplementedError, match=rf"^head_dim {d} "):
        call(q, k, v)


# ---------------------------------------------------------------------------
# Scalar and option arguments (all three entry points)
# ---------------------------------------------------------------------------

@ENTRY_POINTS
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_invalid(call, p):
    with pytest.raises(ValueError, match=r"^dropout_p must be"):
        call(*_qkv(), dropout_p=p)


@ENTRY_POINTS
@pytest.mark.parametrize("p", ["0.1", True, None])
def test_dropout_not_a_number(call, p):
    with pytest.raises(TypeError, match=r"^dropout_p must be a float"):
        call(*_qkv(), dropout_p=p)


@ENTRY_POINTS
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_accepted(call, p):
    out, _, s_dmask = call(*_qkv(), dropout_p=p, return_attn_probs=True)
    assert out.shape == (B, S, H, D) and torch.isfinite(out).all()
    assert s_dmask.shape == (B, H, S, S)


@ENTRY_POINTS
@pytest.mark.parametrize("scale", ["0.5", True, torch.tensor(0.5), [0.5]], ids=["str", "bool", "tensor", "list"])
def test_softmax_scale_wrong_type(call, scale):
    with pytest.raises(TypeError, match=r"^softmax_scale must be a float"):
        call(*_qkv(), softmax_scale=scale)


@ENTRY_POINTS
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf")])
def test_softmax_scale_not_finite(call, scale):
    with pytest.raises(ValueError, match=r"^softmax_scale must be finite"):
        call(*_qkv(), softmax_scale=scale)


@ENTRY_POINTS
@pytest.mark.parametrize("scale", [1e39, -3e38, 1e-50, -2.0 ** -127])
def test_softmax_scale_beyond_float32(call, scale):
    # Beyond float32's normal range the kernels' float32 scale would round to 0 or overflow (and Triton would type
    # the argument float64); 0 and negative scales in range stay valid.
    with pytest.raises(ValueError, match=r"^softmax_scale must be 0 or of magnitude"):
        call(*_qkv(), softmax_scale=scale)


@ENTRY_POINTS
@pytest.mark.parametrize("softcap", [1e39, 1e-50])
def test_softcap_beyond_float32(call, softcap):
    with pytest.raises(ValueError, match=r"^softcap must be 0 or in"):
        call(*_qkv(), softcap=softcap)


@ENTRY_POINTS
@pytest.mark.parametrize("causal", [1, 0, "yes", None, np.bool_(True)])
def test_causal_not_bool(call, causal):
    with pytest.raises(TypeError, match=r"^causal must be a bool"):
        call(*_qkv(), causal=causal)


@ENTRY_POINTS
@pytest.mark.parametrize("window", [(1,), (1, 2, 3), (-2, 0), (0, -5), "ab", (1.5, 0), (True, False), None, 4],
                         ids=["len1", "len3", "left<-1", "right<-1", "str", "float", "bool", "None", "int"])
def test_window_size_malformed(call, window):
    with pytest.raises(ValueError, match=r"^window_size"):
        call(*_qkv(), window_size=window)


@ENTRY_POINTS
@pytest.mark.parametrize("window", [(4, 0), (-1, 0), (0, -1), [2, 2]])
@pytest.mark.parametrize("causal", [False, True])
def test_window_size_accepted(call, window, causal):
    out = call(*_qkv(), window_size=window, causal=causal)
    assert out.shape == (B, S, H, D) and torch.isfinite(out).all()


@ENTRY_POINTS
@pytest.mark.parametrize("softcap", [-1, -0.5, float("nan"), float("inf")])
def test_softcap_invalid(call, softcap):
    with pytest.raises(ValueError, match=r"^softcap must be"):
        call(*_qkv(), softcap=softcap)


@ENTRY_POINTS
@pytest.mark.parametrize("softcap", ["1.0", None])
def test_softcap_not_a_number(call, softcap):
    with pytest.raises(TypeError, match=r"^softcap must be a float"):
        call(*_qkv(), softcap=softcap)


@ENTRY_POINTS
def test_softcap_accepted(call):
    out = call(*_qkv(), softcap=5.0)
    assert out.shape == (B, S, H, D) and torch.isfinite(out).all()


@ENTRY_POINTS
@pytest.mark.parametrize("shape", [(H + 1,), (B, H, 1), (H, B + 1), (1,), ()], ids=str)
def test_alibi_slopes_wrong_shape(call, shape):
    with pytest.raises(ValueError, match=r"^alibi_slopes must have shape"):
        call(*_qkv(), alibi_slopes=_randn(*shape))


@ENTRY_POINTS
def test_alibi_slopes_not_tensor(call):
    with pytest.raises(TypeError, match=r"^alibi_slopes must be a torch\.Tensor"):
        call(*_qkv(), alibi_slopes=[0.5] * H)


@ENTRY_POINTS
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_alibi_slopes_wrong_dtype(call, dtype):
    with pytest.raises(TypeError, match=r"^alibi_slopes must be float32"):
        call(*_qkv(), alibi_slopes=_randn(H, dtype=dtype))


@ENTRY_POINTS
@pytest.mark.parametrize("shape", [(H,), (B, H)])
def test_alibi_slopes_accepted(call, shape):
    out = call(*_qkv(), alibi_slopes=_randn(*shape).abs())
    assert out.shape == (B, S, H, D) and torch.isfinite(out).all()


@ENTRY_POINTS
def test_alibi_slopes_wrong_device(call):
    with pytest.raises(ValueError, match=r"^alibi_slopes must be on q's device"):
        call(*_qkv(), alibi_slopes=torch.rand(H, device="meta"))


@ENTRY_POINTS
@pytest.mark.parametrize("bad,error,message", [
    (torch.zeros(H + 1), ValueError, r"^sinks must have shape"),
    (torch.zeros(B, H), ValueError, r"^sinks must have shape"),
    (torch.zeros(H, dtype=torch.float16), TypeError, r"^sinks must be float32"),
    (torch.zeros(H, device="meta"), ValueError, r"^sinks must be on q's device"),
    ([0.0] * H, TypeError, r"^sinks must be a torch\.Tensor"),
], ids=["long", "2d", "fp16", "device", "list"])
def test_sinks_invalid(call, bad, error, message):
    with pytest.raises(error, match=message):
        call(*_qkv(), sinks=bad)


@ENTRY_POINTS
@pytest.mark.parametrize("name", ["deterministic", "return_attn_probs"])
@pytest.mark.parametrize("value", [1, 0, "True", None])
def test_flags_not_bool(call, name, value):
    with pytest.raises(TypeError, match=rf"^{name} must be a bool"):
        call(*_qkv(), **{name: value})


# ---------------------------------------------------------------------------
# Valid edge cases: must run and give the right answer
# ---------------------------------------------------------------------------

@ENTRY_POINTS
def test_explicit_defaults_and_numeric_types_accepted(call):
    """Ints for dropout_p / softcap, a list window, numpy scalars for the scale: all valid."""
    q, k, v = _qkv()
    ref, _ = _reference(q, k, v, softmax_scale=0.5)
    for kw in (dict(dropout_p=0, softcap=0, window_size=[-1, -1], softmax_scale=0.5),
               dict(softmax_scale=np.float32(0.5), window_size=(np.int64(-1), -1)),
               dict(softmax_scale=np.float64(0.5), deterministic=True, alibi_slopes=None)):
        out = call(q, k, v, **kw)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@ENTRY_POINTS
def test_output_matches_reference(call):
    torch.manual_seed(0)
    q, k, v = _qkv()
    for causal in (False, True):
        out, lse, probs = call(q, k, v, causal=causal, softmax_scale=0.3, return_attn_probs=True)
        ref_out, ref_lse = _reference(q, k, v, softmax_scale=0.3, causal=causal)
        assert probs is None
        torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_output_dtype_and_lse(dtype, atol):
    torch.manual_seed(1)
    sq, sk, h, hk = 6, 9, 4, 2
    q, k, v = _qkv(sq=sq, sk=sk, h=h, hk=hk, dtype=dtype)
    out, lse, probs = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert out.dtype == dtype and out.shape == q.shape and out.device == q.device
    assert lse.dtype == torch.float32 and lse.shape == (B, h, sq)
    assert probs is None
    plain = flash_attn_func(q, k, v, causal=True)
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, out)
    ref_out, ref_lse = _reference(q, k, v, causal=True)
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=atol)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-3, rtol=1e-3)


@ENTRY_POINTS
def test_empty_batch(call):
    q, k, v = (t.requires_grad_(True) for t in _qkv(b=0))
    out, lse, _ = call(q, k, v, return_attn_probs=True)
    assert out.shape == (0, S, H, D) and out.dtype == q.dtype
    assert lse.shape == (0, H, S) and lse.dtype == torch.float32
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_seqlen_q_zero():
    q, k, v = (t.requires_grad_(True) for t in _qkv(sq=0, sk=7, h=4, hk=2))
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    assert out.shape == (B, 0, 4, D) and lse.shape == (B, 4, 0) and lse.dtype == torch.float32
    out.sum().backward()
    assert q.grad.shape == q.shape
    # No query attends to anything: k and v get exactly zero gradient.
    for g, t in ((k.grad, k), (v.grad, v)):
        assert g.shape == t.shape
        assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("causal", [False, True])
def test_seqlen_k_zero(causal):
    q, k, v = (t.requires_grad_(True) for t in _qkv(sq=6, sk=0, h=4, hk=2))
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.equal(out, torch.zeros_like(out))
    assert lse.shape == (B, 4, 6) and lse.dtype == torch.float32
    assert torch.all(lse == math.inf)
    out.backward(torch.randn_like(out))
    assert torch.isfinite(q.grad).all()
    assert torch.equal(q.grad, torch.zeros_like(q.grad))
    assert k.grad.shape == k.shape and v.grad.shape == v.shape


def test_causal_queries_that_see_no_key():
    """causal with seqlen_q > seqlen_k, bottom-right aligned: the first rows see nothing."""
    torch.manual_seed(2)
    q, k, v = (t.requires_grad_(True) for t in _qkv(sq=7, sk=3))
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert torch.all(lse[:, :, :4] == math.inf)
    ref_out, ref_lse = _reference(q.detach(), k.detach(), v.detach(), causal=True)
    torch.testing.assert_close(out.detach().double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    out.backward(torch.randn_like(out))
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    assert torch.equal(q.grad[:, :4], torch.zeros_like(q.grad[:, :4]))


@pytest.mark.parametrize("d,shape", [(1, (2, 9, 2, 1)), (256, (1, 3, 2, 256))], ids=["d1", "d256"])
def test_extreme_head_dims(d, shape):
    torch.manual_seed(3)
    b, s, h, _ = shape
    tensors = _qkv(b=b, sq=s, sk=s + 2, h=h, hk=1, d=d)
    dout = torch.randn(shape)
    out, grads = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True), tensors, dout)
    ref_out, ref_grads = _grads(lambda q, k, v: _reference(q, k, v, causal=True)[0],
                                [t.double() for t in tensors], dout.double())
    assert out.shape == shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, atol=1e-4, rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=1e-4, rtol=1e-4)


def _strided(b, s, h, d):
    """A (b, s, h, d) view whose head dim has stride h (not 1)."""
    return torch.randn(b, s, d, h).transpose(-1, -2)


def test_non_contiguous_inputs_are_copied():
    torch.manual_seed(4)
    q, k, v = _strided(B, 6, 4, D), _strided(B, 9, 2, D), _strided(B, 9, 2, D)
    assert q.stride(-1) != 1 and k.stride(-1) != 1 and v.stride(-1) != 1
    q_ref, k_ref, v_ref = q.clone(), k.clone(), v.clone()
    dout = torch.randn(q.shape)
    out, grads = _grads(lambda *t: flash_attn_func(*t, causal=True), (q, k, v), dout)
    out_c, grads_c = _grads(lambda *t: flash_attn_func(*t, causal=True),
                            (q.contiguous(), k.contiguous(), v.contiguous()), dout)
    torch.testing.assert_close(out, out_c, atol=1e-6, rtol=1e-6)
    for g, gc, t in zip(grads, grads_c, (q, k, v)):
        assert g.shape == t.shape
        torch.testing.assert_close(g, gc, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.double(), _reference(q, k, v, causal=True)[0], atol=1e-5, rtol=1e-5)
    # The inputs are read, never written.
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref) and torch.equal(v, v_ref)


def test_non_contiguous_packed_gradients():
    """Packed inputs are strided views; gradients flow back into the packed tensor."""
    torch.manual_seed(5)
    qkv = torch.randn(B, S, 3, H, D)
    dout = torch.randn(B, S, H, D)
    out_p, (g_qkv,) = _grads(lambda t: flash_attn_qkvpacked_func(t, causal=True), (qkv,), dout)
    out_u, g_u = _grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True), qkv.unbind(2), dout)
    torch.testing.assert_close(out_p, out_u, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_qkv, torch.stack(g_u, 2), atol=1e-6, rtol=1e-6)

    q = torch.randn(B, S, 4, D)
    kv = torch.randn(B, S + 3, 2, 2, D)
    out_p, (g_q, g_kv) = _grads(lambda a, b: flash_attn_kvpacked_func(a, b), (q, kv), dout.repeat(1, 1, 2, 1))
    out_u, g_u = _grads(lambda a, b, c: flash_attn_func(a, b, c), (q, *kv.unbind(2)), dout.repeat(1, 1, 2, 1))
    torch.testing.assert_close(out_p, out_u, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_q, g_u[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g_kv, torch.stack(g_u[1:], 2), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_deterministic_backward(dtype):
    torch.manual_seed(6)
    tensors = _qkv(sq=23, sk=37, h=4, hk=2, dtype=dtype)
    dout = torch.randn(tensors[0].shape, dtype=dtype)

    def run():
        return _grads(lambda *t: flash_attn_func(*t, causal=True, deterministic=True), tensors, dout)

    out1, grads1 = run()
    out2, grads2 = run()
    assert torch.equal(out1, out2)
    for g1, g2 in zip(grads1, grads2):
        assert g1.dtype == dtype
        assert torch.isfinite(g1).all()
        assert torch.equal(g1, g2)
    # And the gradients are the right ones.
    _, ref_grads = _grads(lambda *t: _reference(*t, causal=True)[0], [t.double() for t in tensors], dout.double())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for g, r in zip(grads1, ref_grads):
        torch.testing.assert_close(g.double(), r, atol=tol, rtol=tol)
