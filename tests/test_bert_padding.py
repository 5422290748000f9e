"""flashtron.bert_padding: flash-attn 2.x's padding helpers (unpad_input, pad_input, index_*).

Every test draws fresh random data from a generator with a new seed each run; the seed is
printed, so a failure's captured output says how to replay it.
"""

import random

import pytest
import torch

from flashtron.bert_padding import (index_first_axis, index_put_first_axis, pad_input, unpad_input,
                                    unpad_input_for_concatenated_sequences)

SIZES = [(1, 1), (1, 9), (3, 7), (5, 13), (4, 1), (6, 32)]
TRAILING = [(), (3,), (2, 5), (2, 1, 3)]
MASK_DTYPES = [torch.bool, torch.int64, torch.int32, torch.uint8]


@pytest.fixture
def gen():
    seed = random.randrange(2**62)
    print(f"bert_padding test seed: {seed}")
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape, dtype=torch.float32):
    # Normal data shifted away from zero, so a dropped or zeroed row cannot pass unnoticed.
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    return x + torch.sign(x) + (x == 0)


def _lengths(gen, batch, seqlen):
    """Random lengths in [0, seqlen], with a zero-length and a full row when batch allows."""
    lengths = torch.randint(0, seqlen + 1, (batch,), generator=gen)
    if batch >= 2:
        perm = torch.randperm(batch, generator=gen)
        lengths[perm[0]] = 0
        lengths[perm[1]] = seqlen
    return lengths


def _right_padded(lengths, seqlen):
    return torch.arange(seqlen)[None, :] < lengths[:, None]


def _scattered(gen, batch, seqlen):
    """Not contiguous blocks: each token valid with probability 1/2, plus an empty and a full row."""
    mask = torch.rand(batch, seqlen, generator=gen) < 0.5
    if batch >= 2:
        mask[0] = False
        mask[-1] = True
    return mask


def _masks(gen, batch, seqlen):
    lengths = _lengths(gen, batch, seqlen)
    right = _right_padded(lengths, seqlen)
    left = right.flip(-1)
    return {"right": right, "left": left, "scattered": _scattered(gen, batch, seqlen)}


def _expected_meta(mask):
    """cu_seqlens, max_seqlen and indices computed directly in Python from a (batch, seqlen) mask."""
    rows = mask.tolist()
    lens = [sum(1 for v in row if v) for row in rows]
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    seqlen = mask.shape[1]
    indices = [b * seqlen + s for b, row in enumerate(rows) for s, v in enumerate(row) if v]
    return lens, cu, max(lens, default=0), indices


# ---------------------------------------------------------------------------------------------
# unpad_input / pad_input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch,seqlen", SIZES)
@pytest.mark.parametrize("trailing", TRAILING)
def test_unpad_pad_round_trip(gen, batch, seqlen, trailing):
    x = _randn(gen, batch, seqlen, *trailing)
    for kind, mask in _masks(gen, batch, seqlen).items():
        x_unpad, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, mask)
        lens, cu, max_len, idx = _expected_meta(mask)

        assert indices.dtype == torch.int64 and indices.tolist() == idx, kind
        assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == cu, kind
        assert seqused.dtype == torch.int32 and seqused.tolist() == lens, kind
        assert type(max_seqlen) is int and max_seqlen == max_len, kind
        assert x_unpad.shape == (cu[-1], *trailing) and x_unpad.dtype == x.dtype, kind
        assert torch.equal(x_unpad, x[mask]), kind  # boolean indexing is row-major too

        padded = pad_input(x_unpad, indices, batch, seqlen)
        assert padded.shape == x.shape and padded.dtype == x.dtype, kind
        m = mask.view(batch, seqlen, *([1] * len(trailing)))
        assert torch.equal(padded, x * m), kind


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_mask_dtypes_agree(gen, mask_dtype):
    batch, seqlen = 5, 11
    x = _randn(gen, batch, seqlen, 4)
    mask = _scattered(gen, batch, seqlen)
    ref = unpad_input(x, mask)
    got = unpad_input(x, mask.to(mask_dtype))
    for a, b in zip(ref, got):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_integer_mask_counts_nonzero_entries(gen):
    # A mask holding values other than 0/1 selects its nonzero entries, and the lengths count them.
    batch, seqlen = 4, 9
    x = _randn(gen, batch, seqlen, 3)
    mask = _scattered(gen, batch, seqlen)
    weights = torch.randint(1, 5, (batch, seqlen), generator=gen)
    a = unpad_input(x, mask)
    b = unpad_input(x, mask.long() * weights)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert a[3] == b[3] and torch.equal(a[4], b[4])


def test_empty_selection_and_empty_batch(gen):
    x = _randn(gen, 3, 6, 2)
    x_unpad, indices, cu, max_seqlen, seqused = unpad_input(x, torch.zeros(3, 6, dtype=torch.bool))
    assert x_unpad.shape == (0, 2) and indices.numel() == 0
    assert cu.tolist() == [0, 0, 0, 0] and max_seqlen == 0 and seqused.tolist() == [0, 0, 0]
    assert torch.equal(pad_input(x_unpad, indices, 3, 6), torch.zeros_like(x))

    x0 = torch.empty(0, 6, 2)
    x_unpad, indices, cu, max_seqlen, seqused = unpad_input(x0, torch.ones(0, 6, dtype=torch.bool))
    assert x_unpad.shape == (0, 2) and cu.tolist() == [0] and max_seqlen == 0 and seqused.numel() == 0
    assert pad_input(x_unpad, indices, 0, 6).shape == (0, 6, 2)


def test_non_contiguous_hidden_states(gen):
    # A slice of a packed qkv tensor: the first two dims merge, the last ones are strided.
    batch, seqlen = 4, 10
    qkv = _randn(gen, batch, seqlen, 3, 2, 8)
    k = qkv[:, :, 1]
    mask = _scattered(gen, batch, seqlen)
    k_unpad, indices, *_ = unpad_input(k, mask)
    assert torch.equal(k_unpad, k[mask])
    t = _randn(gen, seqlen, batch, 5).transpose(0, 1)  # first two dims do not merge: a copy
    t_unpad, indices, *_ = unpad_input(t, mask)
    assert torch.equal(t_unpad, t[mask])
    assert torch.equal(pad_input(t_unpad, indices, batch, seqlen), t * mask[..., None])


# ---------------------------------------------------------------------------------------------
# unused_mask (flash-attn 2.7)
# ---------------------------------------------------------------------------------------------

def test_unused_mask_semantics(gen):
    batch, seqlen = 6, 12
    x = _randn(gen, batch, seqlen, 2, 3)
    used = torch.randint(0, seqlen + 1, (batch,), generator=gen)
    used[0], used[1] = 0, seqlen
    unused = (torch.rand(batch, generator=gen) * (seqlen - used + 1)).long()  # used + unused <= seqlen
    unused[2] = 0
    pos = torch.arange(seqlen)[None, :]
    attention_mask = pos < used[:, None]
    unused_mask = (pos >= used[:, None]) & (pos < (used + unused)[:, None])
    selected = attention_mask | unused_mask

    x_unpad, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, attention_mask, unused_mask)
    lens, cu, max_len, idx = _expected_meta(selected)
    assert indices.tolist() == idx and cu_seqlens.tolist() == cu and max_seqlen == max_len
    assert cu_seqlens.dtype == torch.int32 and seqused.dtype == torch.int32
    assert seqused.tolist() == used.tolist()  # only attention_mask tokens are "used"
    assert torch.equal(x_unpad, x[selected])
    assert torch.equal(pad_input(x_unpad, indices, batch, seqlen), x * selected[..., None, None])

    # Without unused_mask, the same call reduces to the attention_mask alone.
    ref = unpad_input(x, attention_mask)
    got = unpad_input(x, attention_mask, torch.zeros_like(unused_mask))
    for a, b in zip(ref, got):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert torch.equal(ref[4], ref[2].diff())


def test_unused_mask_overlap_and_scattered(gen):
    # Tokens in both masks are selected (and counted) once; masks need not be blocks.
    batch, seqlen = 5, 9
    x = _randn(gen, batch, seqlen, 4)
    attention_mask = _scattered(gen, batch, seqlen)
    unused_mask = torch.rand(batch, seqlen, generator=gen) < 0.4
    _, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, attention_mask.int(), unused_mask)
    lens, cu, max_len, idx = _expected_meta(attention_mask | unused_mask)
    assert indices.tolist() == idx and cu_seqlens.tolist() == cu and max_seqlen == max_len
    assert seqused.tolist() == attention_mask.sum(-1).tolist()


# ---------------------------------------------------------------------------------------------
# index_first_axis / index_put_first_axis
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trailing", TRAILING)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_index_first_axis_values(gen, trailing, index_dtype):
    n = 17
    x = _randn(gen, n, *trailing)
    indices = torch.randperm(n, generator=gen)[:9].to(index_dtype)
    out = index_first_axis(x, indices)
    assert out.shape == (9, *trailing) and out.is_contiguous()
    assert torch.equal(out, x[indices.long()])

    back = index_put_first_axis(out, indices, n)
    expect = torch.zeros_like(x)
    expect[indices.long()] = x[indices.long()]
    assert torch.equal(back, expect)


def test_index_first_axis_gradient_is_scattered(gen):
    x = _randn(gen, 8, 3).requires_grad_()
    indices = torch.tensor([5, 0, 6])
    grad = _randn(gen, 3, 3)
    index_first_axis(x, indices).backward(grad)
    expect = torch.zeros(8, 3)
    expect[indices] = grad
    assert torch.equal(x.grad, expect)


@pytest.mark.parametrize("trailing", [(), (2,), (2, 3)])
def test_gradcheck_index_functions(gen, trailing):
    n = 7
    x = _randn(gen, n, *trailing, dtype=torch.float64).requires_grad_()
    indices = torch.randperm(n, generator=gen)[:4]
    assert torch.autograd.gradcheck(lambda t: index_first_axis(t, indices), (x,))
    assert torch.autograd.gradgradcheck(lambda t: index_first_axis(t, indices), (x,))
    v = _randn(gen, 4, *trailing, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: index_put_first_axis(t, indices, n), (v,))
    # Repeated indices: each gathered copy adds its gradient.
    rep = torch.tensor([1, 3, 1, 1])
    assert torch.autograd.gradcheck(lambda t: index_first_axis(t, rep), (x,))


@pytest.mark.parametrize("trailing", [(), (3,), (2, 2)])
def test_gradcheck_unpad_and_pad(gen, trailing):
    batch, seqlen = 3, 5
    x = _randn(gen, batch, seqlen, *trailing, dtype=torch.float64).requires_grad_()
    mask = _right_padded(_lengths(gen, batch, seqlen), seqlen)
    mask[0, 0] = True  # at least one token
    assert torch.autograd.gradcheck(lambda t: unpad_input(t, mask)[0], (x,))
    _, indices, *_ = unpad_input(x.detach(), mask)
    packed = _randn(gen, indices.numel(), *trailing, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pad_input(t, indices, batch, seqlen), (packed,))


def test_index_first_axis_under_torch_compile(gen):
    # aot_eager traces the autograd.Function through dynamo and AOTAutograd without code generation.
    f = torch.compile(lambda t, i: index_first_axis(t, i) * 2, backend="aot_eager", fullgraph=True)
    x = _randn(gen, 9, 2, 3).requires_grad_()
    indices = torch.tensor([8, 2, 4, 0])
    out = f(x, indices)
    assert torch.equal(out, x.detach()[indices] * 2)
    out.sum().backward()
    expect = torch.zeros(9, 2, 3)
    expect[indices] = 2
    assert torch.equal(x.grad, expect)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,match", [
    (lambda x, m: unpad_input(x[0, 0], m), ValueError, "hidden_states"),
    (lambda x, m: unpad_input(x, m[0]), ValueError, r"attention_mask must be \(batch, seqlen\)"),
    (lambda x, m: unpad_input(x, m[:2]), ValueError, "attention_mask .* got shape \\(2, 5\\)"),
    (lambda x, m: unpad_input(x, m[:, :4]), ValueError, "attention_mask"),
    (lambda x, m: unpad_input(x, m.float()), TypeError, "attention_mask"),
    (lambda x, m: unpad_input(x, m, m[:, :3]), ValueError, "unused_mask"),
    (lambda x, m: unpad_input(x, m.tolist()), TypeError, "attention_mask"),
    (lambda x, m: index_first_axis(x, torch.tensor([[0]])), ValueError, "indices must be 1-D"),
    (lambda x, m: index_first_axis(x, torch.tensor([0.0])), TypeError, "indices"),
    (lambda x, m: index_first_axis(x[0, 0, 0], torch.tensor([0])), ValueError, "input"),
    (lambda x, m: index_put_first_axis(x[0], torch.tensor([0, 1]), 3), ValueError, "indices .* values"),
    (lambda x, m: index_put_first_axis(x[0], torch.arange(5), -1), ValueError, "first_axis_dim"),
    (lambda x, m: pad_input(x[0], torch.arange(4), 1, 5), ValueError, "indices .* hidden_states"),
    (lambda x, m: pad_input(x[0], torch.arange(5), 1.0, 5), TypeError, "batch"),
    (lambda x, m: pad_input(x[0], torch.arange(5), 1, -5), ValueError, "seqlen"),
])
def test_bad_input_names_the_argument(gen, call, exc, match):
    x = _randn(gen, 3, 5, 2)
    m = torch.ones(3, 5, dtype=torch.bool)
    with pytest.raises(exc, match=match):
        call(x, m)


def test_unpad_input_for_concatenated_sequences():
    """Rows holding several sequences end to end: one cu_seqlens entry per sequence, tokens in row-major order."""
    hidden = torch.randn(3, 6, 2, 5, requires_grad=True)
    lengths = torch.tensor([[3, 2, 0, 0, 0, 0], [1, 4, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    packed, indices, cu_seqlens, max_seqlen = unpad_input_for_concatenated_sequences(hidden, lengths)
    assert indices.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert cu_seqlens.tolist() == [0, 3, 5, 6, 10, 11] and cu_seqlens.dtype == torch.int32 and max_seqlen == 4
    assert torch.equal(packed, hidden.flatten(0, 1)[indices])
    packed.sum().backward()
    assert torch.equal(hidden.grad.flatten(0, 1).sum((1, 2)) != 0, torch.isin(torch.arange(18), indices))
    with pytest.raises(ValueError, match="attention_mask_in_length must hold non-negative lengths"):
        unpad_input_for_concatenated_sequences(hidden, torch.full((3, 6), 2))
    with pytest.raises(TypeError, match="attention_mask_in_length must hold integer lengths"):
        unpad_input_for_concatenated_sequences(hidden, lengths.float())
