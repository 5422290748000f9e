"""flashtron.scaled_dot_product_attention against torch's SDPA.

The truth is torch's own SDPA (math backend) in float64 on upcast inputs; the yardstick is torch's
SDPA in the input precision; flashtron's error may be at most 2x that (3x for gradients), as in
tests/reference.py.  Masks, causal alignment with Sq != Sk both ways, GQA, broadcast batch dims
and head dims that differ between query and value are all exercised.
"""

import pytest
import torch
import torch.nn.functional as F

import flashtron
from flashtron.sdpa import scaled_dot_product_attention
from reference import assert_within_rule


def _leaf(t, dtype):
    return t.to(dtype).detach().requires_grad_()


def _run(fn, query, key, value, attn_mask, grad_out, **kwargs):
    """Forward and backward; returns out and the gradients of every input that requires grad."""
    out = fn(query, key, value, attn_mask=attn_mask, **kwargs)
    inputs = [t for t in (query, key, value, attn_mask) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, inputs, grad_out.to(out.dtype))
    return out, grads


def _compare(dtype, query, key, value, attn_mask=None, **kwargs):
    """query/key/value/attn_mask are float32 draws; the mask's gradient is checked when it is float."""
    mask_grad = attn_mask is not None and attn_mask.is_floating_point()

    def cast(mask_dtype):
        if attn_mask is None or not mask_grad:
            return attn_mask
        return _leaf(attn_mask, mask_dtype)

    with torch.no_grad():
        grad_out = torch.randn_like(F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, **kwargs))
    ours = _run(scaled_dot_product_attention, *(_leaf(t, dtype) for t in (query, key, value)), cast(dtype),
                grad_out, **kwargs)
    truth = _run(F.scaled_dot_product_attention, *(_leaf(t, torch.float64) for t in (query, key, value)),
                 cast(torch.float64), grad_out, **kwargs)
    plain = _run(F.scaled_dot_product_attention, *(_leaf(t, dtype) for t in (query, key, value)), cast(dtype),
                 grad_out, **kwargs)
    assert ours[0].shape == truth[0].shape and ours[0].dtype == dtype
    assert_within_rule("out", ours[0], truth[0], plain[0], 2)
    names = ["dquery", "dkey", "dvalue", "dmask"]
    for name, g, g_truth, g_plain in zip(names, ours[1], truth[1], plain[1]):
        assert g.shape == g_truth.shape, name
        assert_within_rule(name, g, g_truth, g_plain, 3)


def _draw(batch, heads, heads_k, seqlen_q, seqlen_k, head_dim, value_dim=None):
    return (torch.randn(batch, heads, seqlen_q, head_dim), torch.randn(batch, heads_k, seqlen_k, head_dim),
            torch.randn(batch, heads_k, seqlen_k, value_dim or head_dim))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seqlen_q,seqlen_k", [(13, 13), (7, 19), (19, 6)])
def test_causal_aligns_top_left(dtype, seqlen_q, seqlen_k):
    _compare(dtype, *_draw(2, 3, 3, seqlen_q, seqlen_k, 24), is_causal=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_boolean_mask_with_empty_rows(dtype):
    query, key, value = _draw(2, 2, 2, 11, 17, 16)
    mask = torch.rand(2, 1, 11, 17) > 0.4
    mask[0, 0, 3] = False  # a query that sees no key: output 0 in torch 2.13 and in flashtron
    _compare(dtype, query, key, value, attn_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_mask_and_its_gradient(dtype):
    query, key, value = _draw(1, 4, 2, 9, 14, 32)
    mask = torch.randn(4, 9, 14)  # broadcast over the batch; per head; GQA
    mask[:, :, 5] = float("-inf")
    _compare(dtype, query, key, value, attn_mask=mask, enable_gqa=True, scale=0.3)


def test_gqa_mqa_and_broadcast_batch_dims():
    # 5-D: (N, G, H, S, D) with key/value broadcast over G; one key/value head (MQA by broadcast)
    query = torch.randn(2, 3, 4, 7, 8)
    key, value = torch.randn(2, 1, 1, 10, 8), torch.randn(2, 1, 1, 10, 8)
    _compare(torch.float32, query, key, value, attn_mask=torch.rand(7, 10) > 0.3)
    # 3-D inputs are a single head
    _compare(torch.float32, *(t[0] for t in _draw(2, 1, 1, 5, 9, 8)), is_causal=True)


@pytest.mark.parametrize("mask_shape", [(2, 5, 9), (1, 5, 9), (2, 1, 9), (5, 9)])
def test_three_dimensional_inputs_take_masks_of_their_weights_shape(mask_shape):
    """3-D inputs (N, L, E) have weights (N, L, S), so a mask (N, L, S) broadcasts; it was taken as (1, N, L, S)."""
    query, key, value = (t[:, 0] for t in _draw(2, 1, 1, 5, 9, 8))
    mask = torch.randn(mask_shape)
    mask[..., 3] = float("-inf")
    _compare(torch.float32, query, key, value, attn_mask=mask)
    _compare(torch.float32, query, key, value, attn_mask=torch.rand(mask_shape) > 0.3)


@pytest.mark.parametrize("head_dim,value_dim", [(16, 40), (40, 8)])
def test_value_head_dim_differs(head_dim, value_dim):
    _compare(torch.float32, *_draw(2, 2, 2, 6, 11, head_dim, value_dim), is_causal=True)


def test_dropout_is_flash_attn_funcs_with_the_same_seed():
    query, key, value = _draw(1, 2, 2, 8, 12, 16)
    torch.manual_seed(7)
    ours = scaled_dot_product_attention(query, key, value, dropout_p=0.3)
    torch.manual_seed(7)
    direct = flashtron.flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                       dropout_p=0.3).transpose(1, 2)
    assert torch.equal(ours, direct)
    assert not torch.allclose(ours, scaled_dot_product_attention(query, key, value))


@pytest.mark.parametrize("shapes", [((1, 2, 0, 8), (1, 2, 5, 8)), ((1, 2, 4, 8), (1, 2, 0, 8)),
                                    ((2, 3, 2, 4, 8), (2, 3, 2, 0, 8)), ((0, 2, 4, 8), (0, 2, 5, 8))],
                         ids=["no-queries", "no-keys", "5d-no-keys", "no-batch"])
def test_empty_sequences_match_torch(shapes):
    query = torch.randn(*shapes[0])
    key, value = torch.randn(*shapes[1]), torch.randn(*shapes[1])
    ours = scaled_dot_product_attention(query, key, value)
    assert torch.equal(ours, torch.nn.functional.scaled_dot_product_attention(query, key, value))


def test_errors_name_the_argument():
    query, key, value = _draw(1, 4, 2, 5, 6, 8)
    with pytest.raises(ValueError, match="enable_gqa"):
        scaled_dot_product_attention(query, key, value)
    query, key, value = _draw(1, 2, 2, 5, 6, 8)
    with pytest.raises(ValueError, match="is_causal"):
        scaled_dot_product_attention(query, key, value, attn_mask=torch.ones(5, 6, dtype=torch.bool),
                                     is_causal=True)
    with pytest.raises(ValueError, match="attn_mask"):
        scaled_dot_product_attention(query, key, value, attn_mask=torch.ones(5, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask"):
        scaled_dot_product_attention(query, key, value, attn_mask=torch.ones(5, 6, dtype=torch.int32))
    with pytest.raises(TypeError, match="query"):
        scaled_dot_product_attention(query.double(), key.double(), value.double())
    with pytest.raises(ValueError, match="dimensions"):
        scaled_dot_product_attention(query[0, 0], key[0, 0], value[0, 0])
