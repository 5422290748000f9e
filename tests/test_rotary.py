"""flashtron.rotary against a float64 rotation written out here, under flash-attn's error rule.

The reference indexes the cos/sin tables at each token's explicit position and rotates the pairs
(j, j + rotary_dim / 2), or (2j, 2j + 1) when interleaved, in float64 on upcast inputs (the truth), or
in the input dtype (what plain PyTorch gets, the yardstick: flashtron's error may be at most 2x that,
3x for gradients).  The tables are fresh random angles, not a smooth RoPE schedule, so a token read
at a wrong position cannot pass.  Runs on the CPU, in plain mode and under TRITON_INTERPRET=1.
"""

import math

import pytest
import torch
import torch._dynamo

from flashtron.rotary import (RotaryEmbedding, apply_rotary_emb, apply_rotary_emb_kv_, apply_rotary_emb_qkv_,
                              apply_rotary_emb_torch, rotate_half)
from reference import assert_within_rule

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rotary_reference(x, cos, sin, positions, interleaved, upcast=True):
    """x (..., heads, head_dim); positions: x.shape[:-2] ints inside the tables."""
    compute = torch.float64 if upcast else x.dtype
    x, cos, sin = x.to(compute), cos.to(compute), sin.to(compute)
    rotary_half = cos.shape[1]
    rotary_dim = 2 * rotary_half
    c = cos[positions.long()].unsqueeze(-2)
    s = sin[positions.long()].unsqueeze(-2)
    first = torch.arange(0, rotary_dim, 2 if interleaved else 1, device=x.device)[:rotary_half]
    second = first + 1 if interleaved else first + rotary_half
    out = x.clone()
    out[..., first] = x[..., first] * c - x[..., second] * s
    out[..., second] = x[..., first] * s + x[..., second] * c
    return out


def random_tables(seqlen_ro, rotary_half, dtype, scale=1.0):
    angles = torch.rand(seqlen_ro, rotary_half, dtype=torch.float64) * 2 * math.pi
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def dense_positions(batch, seqlen, offsets):
    offsets = torch.as_tensor(offsets).long().reshape(-1, 1).expand(batch, 1)
    return offsets + torch.arange(seqlen)[None, :]


def packed_positions(cu_seqlens, offsets):
    bounds = cu_seqlens.long().tolist()
    offsets = torch.as_tensor(offsets).long().reshape(-1).expand(len(bounds) - 1).tolist()
    return torch.cat([torch.arange(b - a) + o for a, b, o in zip(bounds, bounds[1:], offsets)])


def assert_rotation(ours, x, cos, sin, positions, interleaved, name="out"):
    truth = rotary_reference(x, cos, sin, positions, interleaved)
    plain = rotary_reference(x, cos, sin, positions, interleaved, upcast=False)
    assert_within_rule(name, ours, truth, plain, 2.0, slack=1e-6)
    rotary_dim = 2 * cos.shape[1]
    # Columns past rotary_dim pass through bit for bit.
    assert torch.equal(ours[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rotary_dim,offsets", [(16, 16, 0), (24, 10, 3), (40, 32, "tensor")])
def test_dense(dtype, interleaved, head_dim, rotary_dim, offsets):
    batch, seqlen, heads = 3, 7, 3
    x = torch.randn(batch, seqlen, heads, head_dim, dtype=dtype)
    cos, sin = random_tables(29, rotary_dim // 2, dtype)
    if offsets == "tensor":
        offsets = torch.tensor([0, 19, 9], dtype=torch.int32)
    out = apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=offsets)
    assert out.shape == x.shape and out.dtype == dtype
    assert_rotation(out, x, cos, sin, dense_positions(batch, seqlen, offsets), interleaved)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_varlen(dtype, interleaved):
    cu_seqlens = torch.tensor([0, 5, 5, 17, 20], dtype=torch.int32)  # one empty sequence
    x = torch.randn(20, 2, 18, dtype=dtype)
    cos, sin = random_tables(31, 7, dtype)
    for offsets in (4, torch.tensor([2, 30, 0, 11], dtype=torch.int64)):
        out = apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=offsets, cu_seqlens=cu_seqlens,
                               max_seqlen=12)
        assert_rotation(out, x, cos, sin, packed_positions(cu_seqlens, offsets), interleaved)


def test_varlen_max_seqlen_understated_still_rotates_every_token():
    """max_seqlen only sizes the launch; a smaller value must not leave tokens unwritten (the checks that
    reject it are host-side and off for CUDA by default, so the op is called directly)."""
    cu_seqlens = torch.tensor([0, 3, 14], dtype=torch.int32)
    x = torch.randn(14, 2, 8)
    cos, sin = random_tables(20, 4, torch.float32)
    out = torch.ops.flashtron.rotary(x, cos, sin, None, 2, cu_seqlens, 4, False, False)
    assert_rotation(out, x, cos, sin, packed_positions(cu_seqlens, 2), False)


def test_positions_outside_the_tables_pass_through():
    """The kernels leave a row whose position is outside [0, seqlen_ro) unchanged (checks bypassed)."""
    x = torch.randn(2, 4, 1, 8)
    cos, sin = random_tables(6, 4, torch.float32)
    offsets = torch.tensor([-2, 4], dtype=torch.int32)  # positions -2..1 and 4..7
    out = torch.ops.flashtron.rotary(x, cos, sin, offsets, 0, None, 4, True, False)
    positions = dense_positions(2, 4, offsets)
    inside = (positions >= 0) & (positions < 6)
    truth = rotary_reference(x, cos, sin, positions.clamp(0, 5), True)
    torch.testing.assert_close(out[inside], truth[inside].float(), atol=1e-6, rtol=1e-6)
    assert torch.equal(out[~inside], x[~inside])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
def test_gradient(dtype, interleaved):
    x = torch.randn(2, 9, 3, 20, dtype=dtype)
    cos, sin = random_tables(16, 8, dtype)
    offsets = torch.tensor([7, 1], dtype=torch.int32)
    dout = torch.randn_like(x)
    positions = dense_positions(2, 9, offsets)

    def gradient(fn, source):
        leaf = source.detach().clone().requires_grad_(True)
        fn(leaf).backward(dout.to(leaf.dtype))
        return leaf.grad

    ours = gradient(lambda t: apply_rotary_emb(t, cos, sin, interleaved, seqlen_offsets=offsets), x)
    truth = gradient(lambda t: rotary_reference(t, cos, sin, positions, interleaved), x.double())
    plain = gradient(lambda t: rotary_reference(t, cos, sin, positions, interleaved, upcast=False), x)
    assert ours.dtype == dtype
    assert_within_rule("dx", ours, truth, plain, 3.0, slack=1e-6)


def test_gradient_varlen():
    cu_seqlens = torch.tensor([0, 4, 11], dtype=torch.int32)
    x = torch.randn(11, 2, 6, dtype=torch.float32, requires_grad=True)
    cos, sin = random_tables(15, 2, torch.float32)
    offsets = torch.tensor([3, 0], dtype=torch.int32)
    out = apply_rotary_emb(x, cos, sin, seqlen_offsets=offsets, cu_seqlens=cu_seqlens, max_seqlen=7)
    dout = torch.randn_like(out)
    out.backward(dout)
    # Rotations are orthogonal: the gradient is the inverse rotation of dout, so rotating it forward again
    # must give dout back.
    again = apply_rotary_emb(x.grad, cos, sin, seqlen_offsets=offsets, cu_seqlens=cu_seqlens, max_seqlen=7)
    torch.testing.assert_close(again, dout, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_inplace(dtype):
    x = torch.randn(2, 5, 2, 12, dtype=dtype)
    cos, sin = random_tables(9, 4, dtype)
    expected = apply_rotary_emb(x, cos, sin, interleaved=True, seqlen_offsets=3)
    target = x.clone()
    with torch.no_grad():
        result = apply_rotary_emb(target, cos, sin, interleaved=True, inplace=True, seqlen_offsets=3)
    assert result is target
    assert torch.equal(target, expected)
    # In place on a strided view: only the view's elements change.
    base = torch.randn(2, 5, 3, 12, dtype=dtype)
    original = base.clone()
    view = base[:, :, 1]
    expected = apply_rotary_emb(view.unsqueeze(2), cos, sin, seqlen_offsets=2).squeeze(2)
    apply_rotary_emb(view.unsqueeze(2), cos, sin, inplace=True, seqlen_offsets=2)
    assert torch.equal(base[:, :, 1], expected)
    assert torch.equal(base[:, :, [0, 2]], original[:, :, [0, 2]])


def test_inplace_with_autograd():
    leaf = torch.randn(1, 6, 2, 8, requires_grad=True)
    cos, sin = random_tables(6, 4, torch.float32)
    x = leaf * 1.0
    out = apply_rotary_emb(x, cos, sin, inplace=True)
    assert out is x
    dout = torch.randn_like(out)
    out.backward(dout)
    positions = dense_positions(1, 6, 0)
    reference_leaf = leaf.detach().double().requires_grad_(True)
    rotary_reference(reference_leaf, cos, sin, positions, False).backward(dout.double())
    torch.testing.assert_close(leaf.grad.double(), reference_leaf.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("layout", ["qkv5", "gqa", "xpos_k"])
def test_qkv_inplace(layout):
    batch, seqlen, head_dim = 2, 5, 12
    cos, sin = random_tables(11, 5, torch.float16)
    cos_k, sin_k = random_tables(11, 5, torch.float16, scale=0.7) if layout == "xpos_k" else (None, None)
    offsets = torch.tensor([6, 0], dtype=torch.int32)
    if layout == "gqa":
        qkv = torch.randn(batch, seqlen, 4 + 2 * 2, head_dim, dtype=torch.float16)
        original = qkv.clone()
        parts = original[:, :, :4], original[:, :, 4:6], original[:, :, 6:]
        result = apply_rotary_emb_qkv_(qkv, cos, sin, seqlen_offsets=offsets, num_heads_q=4)
        got = qkv[:, :, :4], qkv[:, :, 4:6], qkv[:, :, 6:]
    else:
        qkv = torch.randn(batch, seqlen, 3, 2, head_dim, dtype=torch.float16)
        original = qkv.clone()
        parts = original.unbind(2)
        result = apply_rotary_emb_qkv_(qkv, cos, sin, cos_k, sin_k, seqlen_offsets=offsets)
        got = qkv.unbind(2)
    assert result is qkv
    positions = dense_positions(batch, seqlen, offsets)
    assert_rotation(got[0], parts[0], cos, sin, positions, False, "q")
    k_tables = (cos_k, sin_k) if cos_k is not None else (cos, sin)
    assert_rotation(got[1], parts[1], *k_tables, positions, False, "k")
    assert torch.equal(got[2], parts[2])


def test_kv_inplace_and_gradient():
    cos, sin = random_tables(8, 3, torch.float32)
    leaf = torch.randn(2, 4, 2, 3, 8, requires_grad=True)
    kv = leaf * 1.0
    original = kv.detach().clone()
    result = apply_rotary_emb_kv_(kv, cos, sin, interleaved=True, seqlen_offsets=4)
    assert result is kv
    positions = dense_positions(2, 4, 4)
    assert_rotation(kv[:, :, 0].detach(), original[:, :, 0], cos, sin, positions, True, "k")
    assert torch.equal(kv[:, :, 1].detach(), original[:, :, 1])
    dkv = torch.randn_like(kv)
    kv.backward(dkv)
    expected_dk = rotary_reference(dkv[:, :, 0], cos, -sin, positions, True)  # the inverse rotation
    torch.testing.assert_close(leaf.grad[:, :, 0].double(), expected_dk, atol=1e-6, rtol=1e-6)
    assert torch.equal(leaf.grad[:, :, 1], dkv[:, :, 1])


def _tables64(dim, base, seqlen, scale_base=None):
    """cos, sin (and the k tables for xPos) in float64, from the formulas."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(seqlen, dtype=torch.float64)[:, None] * inv_freq[None, :]
    if scale_base is None:
        return angles.cos(), angles.sin(), angles.cos(), angles.sin()
    scale = (torch.arange(0, dim, 2, dtype=torch.float64) + 0.4 * dim) / (1.4 * dim)
    scale = scale[None, :] ** ((torch.arange(seqlen, dtype=torch.float64) - seqlen // 2) / scale_base)[:, None]
    return angles.cos() * scale, angles.sin() * scale, angles.cos() / scale, angles.sin() / scale


@pytest.mark.parametrize("scale_base", [None, 64.0])
def test_rotary_embedding_module(scale_base):
    dim, head_dim, seqlen = 8, 12, 6
    module = RotaryEmbedding(dim, base=500.0, interleaved=True, scale_base=scale_base)
    qkv = torch.randn(2, seqlen, 3, 2, head_dim)
    original = qkv.clone()
    assert module(qkv, seqlen_offset=3) is qkv
    cos, sin, cos_k, sin_k = _tables64(dim, 500.0, seqlen + 3, scale_base)
    positions = dense_positions(2, seqlen, 3)
    assert_within_rule("q", qkv[:, :, 0], rotary_reference(original[:, :, 0], cos, sin, positions, True),
                       rotary_reference(original[:, :, 0], cos.float(), sin.float(), positions, True, False), 2.0,
                       slack=1e-5)
    torch.testing.assert_close(qkv[:, :, 1].double(), rotary_reference(original[:, :, 1], cos_k, sin_k, positions,
                                                                       True), atol=1e-5, rtol=1e-5)
    assert torch.equal(qkv[:, :, 2], original[:, :, 2])


def test_rotary_embedding_module_with_kv_and_tensor_offsets():
    module = RotaryEmbedding(6, pos_idx_in_fp32=True)
    q = torch.randn(2, 3, 4, 6, dtype=torch.bfloat16)
    kv = torch.randn(2, 3, 2, 2, 6, dtype=torch.bfloat16)
    q0, kv0 = q.clone(), kv.clone()
    offsets = torch.tensor([5, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="max_seqlen"):
        module(q, kv, seqlen_offset=offsets)
    q_out, kv_out = module(q, kv, seqlen_offset=offsets, max_seqlen=8)
    assert q_out is q and kv_out is kv
    positions = dense_positions(2, 3, offsets)
    tables = module._cos_cached, module._sin_cached  # in q's dtype; checked against the formula below
    assert_rotation(q, q0, *tables, positions, False, "q")
    assert_rotation(kv[:, :, 0], kv0[:, :, 0], *tables, positions, False, "k")
    assert torch.equal(kv[:, :, 1], kv0[:, :, 1])
    cos, sin, _, _ = _tables64(6, 10000.0, 8)
    assert tables[0].dtype == torch.bfloat16 and tables[0].shape == (8, 3)
    # Within half a bf16 ulp of values <= 1 (2 ** -9), plus the fp32 angle error.
    torch.testing.assert_close(tables[0].double(), cos, atol=2.0 ** -9 + 1e-6, rtol=0)
    torch.testing.assert_close(tables[1].double(), sin, atol=2.0 ** -9 + 1e-6, rtol=0)


def test_compile_fullgraph():
    torch._dynamo.reset()
    cos, sin = random_tables(10, 4, torch.float32)
    offsets = torch.tensor([1, 2], dtype=torch.int32)

    def block(x):
        out = apply_rotary_emb(x * 2.0, cos, sin, seqlen_offsets=offsets)
        return out.tanh()

    def block_inplace(x):
        y = x + 1.0
        apply_rotary_emb(y, cos, sin, interleaved=True, inplace=True, seqlen_offsets=3)
        return y

    x = torch.randn(2, 5, 3, 10)
    leaf_eager, leaf_compiled = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = block(leaf_eager)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)(leaf_compiled)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)
    dout = torch.randn_like(eager)
    eager.backward(dout)
    compiled.backward(dout)
    torch.testing.assert_close(leaf_compiled.grad, leaf_eager.grad, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(block_inplace, backend="aot_eager", fullgraph=True)(x),
                                   block_inplace(x), atol=0, rtol=0)
    torch._dynamo.reset()


def test_opcheck():
    x = torch.randn(2, 4, 2, 8, requires_grad=True)
    cos, sin = random_tables(7, 3, torch.float32)
    offsets = torch.tensor([0, 3], dtype=torch.int32)
    for op, arg in ((torch.ops.flashtron.rotary.default, x), (torch.ops.flashtron.rotary_.default, x.detach())):
        result = torch.library.opcheck(op, (arg, cos, sin, offsets, 0, None, 4, False, False))
        assert all(v == "SUCCESS" for v in result.values()), result


def test_empty_inputs():
    cos, sin = random_tables(4, 2, torch.float32)
    x = torch.randn(0, 3, 2, 4)
    assert apply_rotary_emb(x, cos, sin).shape == x.shape
    out = apply_rotary_emb(torch.randn(2, 0, 2, 4), cos, sin, seqlen_offsets=4)
    assert out.shape == (2, 0, 2, 4)


def _error_cases():
    x = torch.randn(2, 5, 2, 8)
    cos, sin = torch.randn(9, 3), torch.randn(9, 3)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    packed = torch.randn(10, 2, 8)
    return [
        (TypeError, "cos has dtype", lambda: apply_rotary_emb(x, cos.half(), sin)),
        (ValueError, "same shape", lambda: apply_rotary_emb(x, cos, sin[:, :2])),
        (ValueError, "rotary_dim", lambda: apply_rotary_emb(x, torch.randn(9, 5), torch.randn(9, 5))),
        (ValueError, "2 dimensions", lambda: apply_rotary_emb(x, cos[None], sin[None])),
        (ValueError, "4 dimensions", lambda: apply_rotary_emb(packed, cos, sin)),
        (TypeError, "supported dtypes", lambda: apply_rotary_emb(x.double(), cos.double(), sin.double())),
        (ValueError, "seqlen_offsets", lambda: apply_rotary_emb(x, cos, sin, seqlen_offsets=5)),
        (ValueError, "seqlen_offsets must be >= 0", lambda: apply_rotary_emb(x, cos, sin, seqlen_offsets=-1)),
        (ValueError, r"shape \(batch,\)",
         lambda: apply_rotary_emb(x, cos, sin, seqlen_offsets=torch.zeros(3, dtype=torch.int32))),
        (TypeError, "seqlen_offsets", lambda: apply_rotary_emb(x, cos, sin, seqlen_offsets=torch.zeros(2))),
        (TypeError, "seqlen_offsets", lambda: apply_rotary_emb(x, cos, sin, seqlen_offsets=1.0)),
        (ValueError, "seqlen_offsets must hold",
         lambda: apply_rotary_emb(x, cos, sin, seqlen_offsets=torch.tensor([0, 6], dtype=torch.int32))),
        (ValueError, "fewer than the sequence length", lambda: apply_rotary_emb(x, cos[:4], sin[:4])),
        (ValueError, "max_seqlen is required", lambda: apply_rotary_emb(packed, cos, sin, cu_seqlens=cu)),
        (TypeError, "cu_seqlens must be int32",
         lambda: apply_rotary_emb(packed, cos, sin, cu_seqlens=cu.long(), max_seqlen=6)),
        (ValueError, "max_seqlen", lambda: apply_rotary_emb(packed, cos, sin, cu_seqlens=cu, max_seqlen=5)),
        (ValueError, "end at the number of tokens",
         lambda: apply_rotary_emb(packed[:9], cos, sin, cu_seqlens=cu, max_seqlen=6)),
        (TypeError, "interleaved", lambda: apply_rotary_emb(x, cos, sin, interleaved=1)),
        (ValueError, "num_heads_q", lambda: apply_rotary_emb_qkv_(torch.randn(2, 5, 6, 8), cos, sin)),
        (ValueError, "num_heads_q", lambda: apply_rotary_emb_qkv_(torch.randn(2, 5, 7, 8), cos, sin, num_heads_q=2)),
        (ValueError, "cos_k and sin_k", lambda: apply_rotary_emb_qkv_(torch.randn(2, 5, 3, 2, 8), cos, sin, cos)),
        (ValueError, "kv must have shape", lambda: apply_rotary_emb_kv_(torch.randn(2, 5, 3, 2, 8), cos, sin)),
        (ValueError, "even int", lambda: RotaryEmbedding(7)),
    ]


@pytest.mark.parametrize("case", range(len(_error_cases())))
def test_errors(case):
    error, message, call = _error_cases()[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [64, 128])
def test_cuda(interleaved, rotary_dim):
    """The kernel on a GPU at model sizes: dense with tensor offsets, packed, in place and the gradient."""
    dtype, device = torch.bfloat16, "cuda"
    x = torch.randn(3, 300, 8, 128, dtype=dtype, device=device)
    cos, sin = (t.to(device) for t in random_tables(1000, rotary_dim // 2, dtype))
    offsets = torch.tensor([0, 700, 41], dtype=torch.int32, device=device)
    out = apply_rotary_emb(x, cos, sin, interleaved, seqlen_offsets=offsets)
    positions = dense_positions(3, 300, offsets.cpu()).to(device)
    assert_rotation(out, x, cos, sin, positions, interleaved)
    inplace = x.clone()
    apply_rotary_emb(inplace, cos, sin, interleaved, inplace=True, seqlen_offsets=offsets)
    assert torch.equal(inplace, out)
    cu_seqlens = torch.tensor([0, 100, 100, 650, 900], dtype=torch.int32, device=device)
    packed = x.reshape(900, 8, 128)
    out = apply_rotary_emb(packed, cos, sin, interleaved, seqlen_offsets=5, cu_seqlens=cu_seqlens, max_seqlen=550)
    assert_rotation(out, packed, cos, sin, packed_positions(cu_seqlens.cpu(), 5).to(device), interleaved)
    leaf = x.clone().requires_grad_(True)
    dout = torch.randn_like(x)
    apply_rotary_emb(leaf, cos, sin, interleaved, seqlen_offsets=offsets).backward(dout)
    # The gradient is the inverse rotation of dout: the rotation by (cos, -sin).
    truth = rotary_reference(dout, cos, -sin, positions, interleaved)
    plain = rotary_reference(dout, cos, -sin, positions, interleaved, upcast=False)
    assert_within_rule("dx", leaf.grad, truth, plain, 3.0, slack=1e-6)


@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "interleaved"])
def test_torch_reference_helpers(interleaved):
    """rotate_half and apply_rotary_emb_torch (flash_attn.layers.rotary's references) against the float64 rotation."""
    x = torch.randn(2, 7, 3, 20, dtype=torch.float64)
    cos, sin = random_tables(9, 6, torch.float64)
    expected = rotary_reference(x, cos, sin, dense_positions(2, 7, 0), interleaved)
    torch.testing.assert_close(apply_rotary_emb_torch(x, cos, sin, interleaved), expected)
    pairs = torch.arange(4.0)
    expected_partners = [-1.0, 0.0, -3.0, 2.0] if interleaved else [-2.0, -3.0, 0.0, 1.0]
    assert rotate_half(pairs, interleaved).tolist() == expected_partners
    with pytest.raises(ValueError, match="rotary_dim"):
        apply_rotary_emb_torch(x[..., :8], cos, sin, interleaved)


def test_in_place_refuses_an_expanded_tensor():
    """An expand holds one element for several positions: rotating it in place would turn that element repeatedly."""
    cos, sin = random_tables(6, 2, torch.float32)
    expanded = torch.randn(1, 3, 1, 4).expand(2, 3, 2, 4)
    with pytest.raises(ValueError, match="inplace=True needs x to hold each element once"):
        apply_rotary_emb(expanded, cos, sin, inplace=True)
    torch.testing.assert_close(apply_rotary_emb(expanded, cos, sin), apply_rotary_emb(expanded.contiguous(), cos, sin))


def test_rotary_embedding_arguments():
    with pytest.raises(ValueError, match="base"):
        RotaryEmbedding(8, base=0)
    with pytest.raises(ValueError, match="base"):
        RotaryEmbedding(8, base=-5.0)
    module = RotaryEmbedding(8)
    qkv = torch.randn(1, 3, 3, 2, 8)
    with pytest.raises(ValueError, match="seqlen_offset must be >= 0"):
        module(qkv.clone(), seqlen_offset=-1)
    with pytest.raises(TypeError, match="seqlen_offset must be an int"):
        module(qkv.clone(), seqlen_offset=1.0)
    with pytest.raises(TypeError, match="max_seqlen must be an int"):
        module(qkv.clone(), max_seqlen=4.0)
