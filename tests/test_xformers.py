"""flashtron.xformers against xFormers' documented semantics.

Each bias's materialize() is checked against masks written out by hand from xFormers' definitions
(top-left vs bottom-right alignment, window sizes).  memory_efficient_attention is then checked
against softmax(q k^T * scale + materialize()) v in float32 with xFormers' own tolerances, so the
mapping of every bias onto flash-attn arguments is tested through the mask it claims to be.
Block-diagonal biases need flash_attn_varlen_func; paged ones its block_table; tensor biases
flash_attn_func(attn_bias=...).  Sizes are tiny: the suite also runs under TRITON_INTERPRET=1.
"""

import math

import pytest
import torch

import flashtron
import flashtron.xformers as xf
from flashtron.xformers import attn_bias as xb
from flashtron.xformers import merge_attentions

# xFormers' tolerances (ops/fmha/common.py and its tests): (atol, rtol).
FORWARD_TOLERANCE = {torch.float16: (4e-3, 4e-4), torch.bfloat16: (2e-2, 5e-3), torch.float32: (3e-4, 2e-5)}
BACKWARD_TOLERANCE = {torch.float16: (0.2, 2e-2), torch.bfloat16: (0.9, 0.1), torch.float32: (5e-4, 1e-4)}
DTYPE_IDS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}

HEADS, HEAD_DIM = 2, 16


# --------------------------------------------------------------------------- masks by hand


def hand_mask(num_queries, num_keys, sees):
    """Additive mask from a rule sees(i, j), written element by element."""
    mask = torch.full((num_queries, num_keys), -math.inf)
    for i in range(num_queries):
        for j in range(num_keys):
            if sees(i, j):
                mask[i, j] = 0.0
    return mask


def hand_blocks(q_blocks, k_blocks, num_queries, num_keys, sees):
    """Block-diagonal mask: q_blocks / k_blocks are (start, length) of the used part of each block;
    sees(i, j, nq, nk) is the rule inside a block, i and j counted from the block's start."""
    mask = torch.full((num_queries, num_keys), -math.inf)
    for (q_start, nq), (k_start, nk) in zip(q_blocks, k_blocks):
        for i in range(nq):
            for j in range(nk):
                if sees(i, j, nq, nk):
                    mask[q_start + i, k_start + j] = 0.0
    return mask


def starts(lengths):
    out, position = [], 0
    for length in lengths:
        out.append((position, length))
        position += length
    return out


TOP_LEFT_CAUSAL = lambda i, j, nq, nk: j <= i                     # noqa: E731
BOTTOM_RIGHT_CAUSAL = lambda i, j, nq, nk: j <= i + nk - nq       # noqa: E731
EVERYTHING = lambda i, j, nq, nk: True                            # noqa: E731


@pytest.mark.parametrize("num_queries,num_keys", [(4, 4), (3, 6), (6, 3)])
def test_materialize_dense_masks(num_queries, num_keys):
    nq, nk = num_queries, num_keys
    cases = [
        # "A query Q cannot attend to a key which is farther from the initial key than Q is from the
        # initial query": top-left.
        (xb.LowerTriangularMask(), lambda i, j: j <= i),
        # "...shifted so that the last query can attend to the last key": bottom-right.
        (xb.LowerTriangularFromBottomRightMask(), lambda i, j: j <= i + nk - nq),
        # A query whose distance from the final query is X cannot attend a key whose distance to the
        # final key is less than X, or X + window_size or more.
        (xb.LowerTriangularFromBottomRightLocalAttentionMask(2),
         lambda i, j: (nq - 1 - i) <= (nk - 1 - j) < (nq - 1 - i) + 2),
        # "q - window_left <= k + s <= q + window_right, s = num_queries - num_keys".
        (xb.LocalAttentionFromBottomRightMask(window_left=1, window_right=2),
         lambda i, j: i - 1 <= j + nq - nk <= i + 2),
    ]
    for bias, sees in cases:
        got = bias.materialize((nq, nk))
        assert torch.equal(got, hand_mask(nq, nk, sees)), type(bias).__name__


def test_materialize_local_attention_matches_xformers_docstring():
    bias = xb.LocalAttentionFromBottomRightMask(window_left=1, window_right=2)
    square = torch.tensor([[1., 1., 1., 0.], [1., 1., 1., 1.], [0., 1., 1., 1.], [0., 0., 1., 1.]])
    wide = torch.tensor([[1., 1., 1., 1., 0.], [0., 1., 1., 1., 1.], [0., 0., 1., 1., 1.], [0., 0., 0., 1., 1.]])
    assert torch.equal(bias.materialize((4, 4)).exp(), square)
    assert torch.equal(bias.materialize((4, 5)).exp(), wide)


def test_materialize_shape_dtype_and_tensor_bias():
    got = xb.LowerTriangularMask().materialize((2, 3, 4, 5), dtype=torch.bfloat16)
    assert got.shape == (2, 3, 4, 5) and got.dtype == torch.bfloat16
    assert torch.equal(got[1, 2].float(), hand_mask(4, 5, lambda i, j: j <= i))
    tensor = torch.randn(2, 3, 4, 5)
    with_bias = xb.LowerTriangularMask().add_bias(tensor)
    assert isinstance(with_bias, xb.LowerTriangularMaskWithTensorBias)
    assert torch.equal(with_bias.materialize((2, 3, 4, 5)), hand_mask(4, 5, lambda i, j: j <= i) + tensor)


def test_materialize_block_diagonal_masks():
    q_lengths, k_lengths = [2, 4, 3], [3, 5, 3]
    nq, nk = sum(q_lengths), sum(k_lengths)
    base = xb.BlockDiagonalMask.from_seqlens(q_lengths, k_lengths, device="cpu")
    window = 2
    cases = [
        (base, EVERYTHING),
        (base.make_causal(), TOP_LEFT_CAUSAL),
        (base.make_causal_from_bottomright(), BOTTOM_RIGHT_CAUSAL),
        # "The ith query in a block only attends to keys in its block with index greater than
        # i - window_size and less than or equal to i."
        (base.make_local_attention(window), lambda i, j, _, __: i - window < j <= i),
        # "A query with distance j from the last query in its block only attends to keys ... whose
        # distance to the last key in the block is >= j and < window_size + j."
        (base.make_local_attention_from_bottomright(window),
         lambda i, j, bq, bk: (bq - 1 - i) <= (bk - 1 - j) < window + (bq - 1 - i)),
    ]
    for bias, sees in cases:
        expected = hand_blocks(starts(q_lengths), starts(k_lengths), nq, nk, sees)
        assert torch.equal(bias.materialize((nq, nk)), expected), type(bias).__name__
    assert type(base.make_causal()) is xb.BlockDiagonalCausalMask
    assert base.q_seqinfo.seqstart_py == [0, 2, 6, 9] and base.q_seqinfo.seqstart.tolist() == [0, 2, 6, 9]
    assert base.k_seqinfo.max_seqlen == 5 and base.k_seqinfo.min_seqlen == 3


def test_materialize_padded_keys_masks():
    q_lengths, padding, used = [2, 1, 3], 5, [4, 0, 2]
    k_blocks = [(b * padding, n) for b, n in enumerate(used)]
    nq, nk = sum(q_lengths), padding * len(used)
    plain = xb.BlockDiagonalPaddedKeysMask.from_seqlens(q_lengths, padding, used, device="cpu")
    assert plain.k_seqinfo.seqstart_py == [0, 5, 10, 15] and plain.k_seqinfo.seqlen.tolist() == used
    offset = xb.BlockDiagonalCausalWithOffsetPaddedKeysMask.from_seqlens(q_lengths, padding, used, device="cpu")
    local = xb.BlockDiagonalCausalLocalAttentionPaddedKeysMask.from_seqlens_local(q_lengths, padding, used, 2,
                                                                                  device="cpu")
    band = xb.BlockDiagonalLocalAttentionPaddedKeysMask.from_seqlens_local(q_lengths, padding, used, 2, 1,
                                                                           device="cpu")
    for bias, sees in [(plain, EVERYTHING), (offset, BOTTOM_RIGHT_CAUSAL),
                       (local, lambda i, j, bq, bk: (bq - 1 - i) <= (bk - 1 - j) < 2 + (bq - 1 - i)),
                       (band, lambda i, j, bq, bk: -2 <= (j - (bk - 1)) - (i - (bq - 1)) <= 1)]:
        assert torch.equal(bias.materialize((nq, nk)), hand_blocks(starts(q_lengths), k_blocks, nq, nk, sees)), \
            type(bias).__name__


def paged_case(paged_type, device="cpu"):
    """Three sequences, pages of 4 keys, at most 2 pages each, 7 physical pages (28 keys)."""
    q_lengths, used, page_size = [2, 1, 3], [5, 8, 3], 4
    block_tables = torch.tensor([[3, 0], [5, 1], [6, 2]], dtype=torch.int32, device=device)
    unpaged_type = paged_type._UNPAGED_TYPE
    unpaged = unpaged_type.from_seqlens(q_lengths, 2 * page_size, used, device=device)
    return unpaged, unpaged.make_paged(block_tables, page_size, paged_type), 7 * page_size


@pytest.mark.parametrize("paged_type", [xb.PagedBlockDiagonalPaddedKeysMask,
                                        xb.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask])
def test_materialize_paged_masks_are_the_unpaged_masks_moved_by_the_block_tables(paged_type):
    unpaged, paged, physical_keys = paged_case(paged_type)
    logical = unpaged.materialize((6, 3 * 8))
    expected = torch.full((6, physical_keys), -math.inf)
    for b, row in enumerate(paged.block_tables.tolist()):
        for logical_page, physical_page in enumerate(row):
            expected[:, physical_page * 4:(physical_page + 1) * 4] = \
                logical[:, b * 8 + logical_page * 4:b * 8 + (logical_page + 1) * 4]
    assert torch.equal(paged.materialize((6, physical_keys)), expected)
    # xFormers' convention: the logical width asks for the pages in use.
    assert torch.equal(paged.materialize((6, 3 * 8)), expected)


# ----------------------------------------------------------------- attention against the oracle


def bias_cases(device="cpu"):
    """(id, factory) with factory() -> (bias, batch, seqlen_q, seqlen_k, what it needs)."""
    dense = lambda bias, b, q, k: lambda: (bias() if callable(bias) else bias, b, q, k)  # noqa: E731
    blocks = lambda q, k, make=lambda m: m: lambda: (  # noqa: E731
        make(xb.BlockDiagonalMask.from_seqlens(q, k, device=device)), 1, sum(q), sum(k))

    def tensor_bias(shape):
        return lambda: (torch.randn(shape, device=device), 2, shape[-2], shape[-1])

    def tensor_and_causal(q, k):
        return lambda: (xb.LowerTriangularMaskWithTensorBias(torch.randn(2, HEADS, q, k, device=device)), 2, q, k)

    def padded(cls, q, padding, used, **window):
        def make():
            if window:
                return cls.from_seqlens_local(q, padding, used, *window.values(), device=device), 1, sum(q), \
                    padding * len(used)
            return cls.from_seqlens(q, padding, used, device=device), 1, sum(q), padding * len(used)
        return make

    def paged(paged_type):
        def make():
            _, bias, physical_keys = paged_case(paged_type, device)
            return bias, 1, 6, physical_keys
        return make

    return [
        ("none", dense(None, 2, 7, 9)),
        ("tensor", tensor_bias((2, HEADS, 7, 9))),
        ("tensor-broadcast", tensor_bias((7, 9))),
        ("causal-topleft-wide", dense(xb.LowerTriangularMask(), 2, 5, 9)),
        ("causal-topleft-tall", dense(xb.LowerTriangularMask(), 2, 9, 5)),
        ("causal-topleft-square", dense(xb.LowerTriangularMask(), 2, 7, 7)),
        ("causal-bottomright-wide", dense(xb.LowerTriangularFromBottomRightMask(), 2, 5, 9)),
        ("causal-bottomright-tall", dense(xb.LowerTriangularFromBottomRightMask(), 2, 9, 5)),
        ("causal-bottomright-local", dense(xb.LowerTriangularFromBottomRightLocalAttentionMask(3), 2, 6, 9)),
        ("local-bottomright", dense(xb.LocalAttentionFromBottomRightMask(2, 1), 2, 6, 9)),
        ("causal-tensor-wide", tensor_and_causal(5, 9)),
        ("causal-tensor-tall", tensor_and_causal(9, 5)),
        ("blockdiag", blocks([3, 5, 2], [4, 2, 6])),
        ("blockdiag-causal", blocks([4, 6, 3], [4, 6, 3], lambda m: m.make_causal())),
        ("blockdiag-causal-morekeys", blocks([3, 4], [5, 6], lambda m: m.make_causal())),
        ("blockdiag-causal-fewerkeys", blocks([5, 6], [3, 4], lambda m: m.make_causal())),
        ("blockdiag-causal-bottomright", blocks([2, 4], [5, 4], lambda m: m.make_causal_from_bottomright())),
        ("blockdiag-local", blocks([4, 3], [4, 5], lambda m: m.make_local_attention(2))),
        ("blockdiag-local-bottomright", blocks([2, 4], [5, 4], lambda m: m.make_local_attention_from_bottomright(3))),
        ("padded", padded(xb.BlockDiagonalPaddedKeysMask, [3, 1, 4], 6, [4, 0, 6])),
        ("padded-causal-offset", padded(xb.BlockDiagonalCausalWithOffsetPaddedKeysMask, [2, 1, 3], 6, [4, 5, 2])),
        ("padded-causal-local", padded(xb.BlockDiagonalCausalLocalAttentionPaddedKeysMask, [2, 1, 3], 6, [4, 5, 6],
                                       window_size=2)),
        ("padded-local", padded(xb.BlockDiagonalLocalAttentionPaddedKeysMask, [2, 1, 3], 7, [4, 5, 7],
                                window_left=2, window_right=1)),
        ("paged", paged(xb.PagedBlockDiagonalPaddedKeysMask)),
        ("paged-causal-offset", paged(xb.PagedBlockDiagonalCausalWithOffsetPaddedKeysMask)),
    ]


BIAS_CASES = bias_cases()


def full_bias(bias, batch, num_heads, seqlen_q, seqlen_k, device="cpu"):
    """The bias as a dense float32 (B, H, Mq, Mk) tensor."""
    if bias is None:
        return torch.zeros(batch, num_heads, seqlen_q, seqlen_k, device=device)
    if isinstance(bias, torch.Tensor):
        return bias.float().expand(batch, num_heads, seqlen_q, seqlen_k)
    return bias.materialize((batch, num_heads, seqlen_q, seqlen_k), device=device)


def reference(query, key, value, bias_tensor, scale=None):
    """(out, lse) of softmax(q k^T * scale + bias) v in float32; [B, M, H, K] in and out; lse
    (B, H, M) with -inf, and out 0, for a query that sees no key."""
    q, k, v = query.float(), key.float(), value.float()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q * scale, k) + bias_tensor
    # A row that sees nothing: a softmax over a finite stand-in, zeroed, keeps NaN out of gradients.
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    scores = scores.masked_fill(empty, 0.0)
    probs = torch.softmax(scores, dim=-1) * ~empty
    lse = torch.logsumexp(scores, dim=-1).masked_fill(empty[..., 0], -math.inf)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v), lse


def random_qkv(batch, seqlen_q, seqlen_k, dtype, num_heads=HEADS, head_dim=HEAD_DIM, device="cpu"):
    make = lambda s: torch.randn(batch, s, num_heads, head_dim, device=device).to(dtype).requires_grad_()  # noqa: E731
    return make(seqlen_q), make(seqlen_k), make(seqlen_k)


def assert_close(name, got, expected, tolerance):
    atol, rtol = tolerance
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def is_paged(bias):
    return type(bias).__name__.startswith("Paged")


def check_against_reference(bias, batch, seqlen_q, seqlen_k, dtype, scale=None, device="cpu"):
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, dtype, device=device)
    bias_leaf = None
    if isinstance(bias, torch.Tensor):
        bias = bias_leaf = bias.to(dtype).requires_grad_()
    elif isinstance(bias, xb.LowerTriangularMaskWithTensorBias):
        bias_leaf = bias._subtensor.to(dtype).requires_grad_()
        bias = xb.LowerTriangularMaskWithTensorBias(bias_leaf)
    out = xf.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)
    assert out.shape == q.shape and out.dtype == dtype
    dout = torch.randn_like(out)
    leaves = [t for t in (q, k, v, bias_leaf) if t is not None]
    if is_paged(bias):
        # Paged caches serve inference: forward only (as in xFormers' paged operators).
        with pytest.raises(NotImplementedError, match="no backward"):
            torch.autograd.grad(out, leaves, dout)
        expected, _ = reference(q.float(), k.float(), v.float(),
                                full_bias(bias, batch, HEADS, seqlen_q, seqlen_k, device), scale)
        assert_close("out", out, expected, FORWARD_TOLERANCE[dtype])
        return
    grads = torch.autograd.grad(out, leaves, dout)

    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    if bias_leaf is None:
        ref_bias = full_bias(bias, batch, HEADS, seqlen_q, seqlen_k, device)
    elif isinstance(bias, torch.Tensor):
        ref_bias = full_bias(ref_leaves[3], batch, HEADS, seqlen_q, seqlen_k)
    else:
        ref_bias = full_bias(xb.LowerTriangularMask(), batch, HEADS, seqlen_q, seqlen_k, device) + ref_leaves[3]
    expected, _ = reference(*ref_leaves[:3], ref_bias, scale)
    ref_grads = torch.autograd.grad(expected, ref_leaves, dout.float())
    assert_close("out", out, expected, FORWARD_TOLERANCE[dtype])
    for name, got, want in zip(("dq", "dk", "dv", "dbias"), grads, ref_grads):
        assert got.shape == want.shape, name
        assert_close(name, got, want, BACKWARD_TOLERANCE[dtype])


# Every bias in float16; a spread of them in bfloat16 and float32 (the suite's time budget).
ORACLE_CASES = ([(case, torch.float16) for case in BIAS_CASES]
                + [(case, dtype) for i, case in enumerate(BIAS_CASES)
                   for dtype in (torch.bfloat16, torch.float32) if i % 2 == (dtype == torch.float32)])


@pytest.mark.parametrize("case,dtype", ORACLE_CASES, ids=[f"{c[0]}-{DTYPE_IDS[d]}" for c, d in ORACLE_CASES])
def test_memory_efficient_attention_matches_oracle(case, dtype):
    check_against_reference(*case[1](), dtype)


def test_custom_scale_and_output_dtype():
    bias, batch, seqlen_q, seqlen_k = dict(BIAS_CASES)["causal-topleft-wide"]()
    check_against_reference(bias, batch, seqlen_q, seqlen_k, torch.float32, scale=0.37)
    q, k, v = random_qkv(1, 5, 6, torch.bfloat16)
    out = xf.memory_efficient_attention(q, k, v, output_dtype=torch.float32, op=object())
    assert out.dtype == torch.float32
    assert torch.equal(out, xf.memory_efficient_attention(q, k, v).float())


def test_dropout_is_applied_and_seeded():
    q, k, v = random_qkv(1, 9, 11, torch.float32)
    torch.manual_seed(3)
    first = xf.memory_efficient_attention(q, k, v, p=0.5)
    torch.manual_seed(3)
    again = xf.memory_efficient_attention(q, k, v, p=0.5)
    assert torch.equal(first, again)
    assert not torch.allclose(first, xf.memory_efficient_attention(q, k, v), atol=1e-3)
    first.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# -------------------------------------------------------- padded keys: nothing read past the end


def poison_unused_keys(key, value, used_positions):
    """Copies with NaN at every key position outside used_positions (a bool (Mk,) tensor)."""
    key, value = key.detach().clone(), value.detach().clone()
    key[:, ~used_positions] = math.nan
    value[:, ~used_positions] = math.nan
    return key, value


@pytest.mark.parametrize("case_id", ["padded", "padded-causal-offset", "paged-causal-offset"])
def test_padded_keys_are_never_read(case_id):
    # xFormers' out-of-bounds check: NaN past each sequence's used keys must not change one bit.
    bias, batch, seqlen_q, seqlen_k = dict(BIAS_CASES)[case_id]()
    q, k, v = random_qkv(batch, seqlen_q, seqlen_k, torch.float16)
    used = torch.isfinite(full_bias(bias, 1, 1, seqlen_q, seqlen_k)[0, 0]).any(0)
    clean = xf.memory_efficient_attention(q, k, v, attn_bias=bias)
    k_nan, v_nan = poison_unused_keys(k, v, used)
    k_nan.requires_grad_(), v_nan.requires_grad_()
    poisoned = xf.memory_efficient_attention(q, k_nan, v_nan, attn_bias=bias)
    assert torch.equal(clean, poisoned) and torch.isfinite(poisoned).all()
    if is_paged(bias):
        return  # forward only
    dq, dk, dv = torch.autograd.grad(poisoned, (q, k_nan, v_nan), torch.ones_like(poisoned))
    assert torch.isfinite(dq).all()
    assert (dk[:, ~used] == 0).all() and (dv[:, ~used] == 0).all(), "unused keys must get gradient 0"


# ------------------------------------------------------------------------------------ layouts


def test_three_dimensional_inputs_are_one_head():
    q, k, v = (torch.randn(2, m, HEAD_DIM) for m in (6, 8, 8))
    out = xf.memory_efficient_attention(q, k, v, attn_bias=xb.LowerTriangularMask())
    assert out.shape == (2, 6, HEAD_DIM)
    expected = xf.memory_efficient_attention(q[:, :, None], k[:, :, None], v[:, :, None],
                                             attn_bias=xb.LowerTriangularMask())
    assert torch.equal(out, expected[:, :, 0])
    bias = torch.randn(2, 6, 8)
    truth, _ = reference(q[:, :, None], k[:, :, None], v[:, :, None], bias[:, None])
    assert_close("out", xf.memory_efficient_attention(q, k, v, attn_bias=bias), truth[:, :, 0],
                 FORWARD_TOLERANCE[torch.float32])


@pytest.fixture
def recorded_key_shapes(monkeypatch):
    shapes, real = [], flashtron.flash_attn_func

    def recording(q, k, v, *args, **kwargs):
        shapes.append(tuple(k.shape))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(flashtron, "flash_attn_func", recording)
    return shapes


def test_grouped_heads_expanded_along_h_run_as_gqa_without_copy(recorded_key_shapes):
    batch, groups, heads_per_group = 2, 2, 3
    q = torch.randn(batch, 7, groups, heads_per_group, HEAD_DIM, requires_grad=True)
    k0 = torch.randn(batch, 9, groups, 1, HEAD_DIM, requires_grad=True)
    v0 = torch.randn(batch, 9, groups, 1, HEAD_DIM, requires_grad=True)
    expand = lambda t: t.expand(batch, 9, groups, heads_per_group, HEAD_DIM)  # noqa: E731
    out = xf.memory_efficient_attention(q, expand(k0), expand(v0), attn_bias=xb.LowerTriangularFromBottomRightMask())
    assert out.shape == q.shape
    assert recorded_key_shapes == [(batch, 9, groups, HEAD_DIM)], "key must reach the kernel unexpanded (GQA)"
    flat = lambda t: t.flatten(2, 3)  # noqa: E731
    truth, _ = reference(flat(q), flat(expand(k0)), flat(expand(v0)),
                         full_bias(xb.LowerTriangularFromBottomRightMask(), batch, groups * heads_per_group, 7, 9))
    assert_close("out", out, truth.unflatten(2, (groups, heads_per_group)), FORWARD_TOLERANCE[torch.float32])
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k0, v0), dout)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (q, k0, v0)]
    truth, _ = reference(flat(ref_leaves[0]), flat(expand(ref_leaves[1])), flat(expand(ref_leaves[2])),
                         full_bias(xb.LowerTriangularFromBottomRightMask(), batch, groups * heads_per_group, 7, 9))
    ref_grads = torch.autograd.grad(truth.unflatten(2, (groups, heads_per_group)), ref_leaves, dout)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, got, want, BACKWARD_TOLERANCE[torch.float32])


def test_grouped_heads_not_expanded_run_as_independent_heads():
    q, k, v = (torch.randn(1, m, 2, 3, HEAD_DIM) for m in (5, 6, 6))
    out = xf.memory_efficient_attention(q, k, v)
    truth, _ = reference(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), torch.zeros(1, 6, 5, 6))
    assert_close("out", out, truth.unflatten(2, (2, 3)), FORWARD_TOLERANCE[torch.float32])


def test_grouped_heads_with_a_tensor_bias_per_group():
    q, k, v = (torch.randn(2, m, 2, 3, HEAD_DIM) for m in (5, 6, 6))
    bias = torch.randn(1, 2, 1, 5, 6)  # one bias per group, broadcast over batch and heads
    out = xf.memory_efficient_attention(q, k, v, attn_bias=bias)
    truth, _ = reference(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3),
                         bias.expand(2, 2, 3, 5, 6).flatten(1, 2))
    assert_close("out", out, truth.unflatten(2, (2, 3)), FORWARD_TOLERANCE[torch.float32])


def test_mqa_written_as_an_expand_reaches_the_kernel_with_one_head(recorded_key_shapes):
    q = torch.randn(1, 5, 4, HEAD_DIM)
    k, v = (torch.randn(1, 6, 1, HEAD_DIM).expand(1, 6, 4, HEAD_DIM) for _ in range(2))
    out = xf.memory_efficient_attention(q, k, v)
    assert recorded_key_shapes == [(1, 6, 1, HEAD_DIM)]
    truth, _ = reference(q, k, v, torch.zeros(1, 4, 5, 6))
    assert_close("out", out, truth, FORWARD_TOLERANCE[torch.float32])


def test_from_tensor_list_and_split_round_trip():
    pieces = [torch.randn(1, 3, HEADS, HEAD_DIM), torch.randn(2, 4, HEADS, HEAD_DIM)]
    bias, packed = xb.BlockDiagonalMask.from_tensor_list(pieces)
    assert packed.shape == (1, 11, HEADS, HEAD_DIM) and bias.q_seqinfo.seqstart_py == [0, 3, 7, 11]
    out = xf.memory_efficient_attention(packed, packed, packed, attn_bias=bias.make_causal())
    for piece, piece_out in zip(pieces, bias.split(out)):
        assert piece_out.shape == piece.shape
        expected = xf.memory_efficient_attention(piece, piece, piece, attn_bias=xb.LowerTriangularMask())
        assert_close("out", piece_out, expected, FORWARD_TOLERANCE[torch.float32])
    q_pieces, k_pieces = [torch.randn(1, 2, 1, 4), torch.randn(1, 3, 1, 4)], [torch.randn(1, 5, 1, 4)] * 2
    qkv_bias, q_packed, k_packed, v_packed = xb.BlockDiagonalMask.from_tensor_lists_qkv(q_pieces, k_pieces)
    assert v_packed is None and q_packed.shape[1] == 5 and k_packed.shape[1] == 10
    assert [t.shape[1] for t in qkv_bias.split_kv(k_packed)] == [5, 5]


# ------------------------------------------------------------------------ partial and merge


def partial_pair(q, parts):
    outs, lses = [], []
    for k, v, bias in parts:
        out, lse = xf.memory_efficient_attention_partial(q, k, v, attn_bias=bias)
        outs.append(out), lses.append(lse)
    return outs, lses


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_partials_over_a_prefix_and_a_causal_suffix_merge_into_the_full_attention(dtype):
    # Prefix caching: 6 cached keys seen by every query, then 5 new keys under a causal mask.
    q, k, v = random_qkv(2, 5, 11, dtype)
    parts = [(k[:, :6], v[:, :6], None), (k[:, 6:], v[:, 6:], xb.LowerTriangularFromBottomRightMask())]
    outs, lses = partial_pair(q, parts)
    assert outs[0].dtype == torch.float32 and lses[0].shape == (2, HEADS, 5) and lses[0].dtype == torch.float32
    merged, merged_lse = merge_attentions(outs, lses, output_dtype=dtype)

    bias = xb.LowerTriangularFromBottomRightMask()
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    truth, truth_lse = reference(*leaves, full_bias(bias, 2, HEADS, 5, 11))
    assert merged.dtype == dtype
    assert_close("out", merged, truth, FORWARD_TOLERANCE[dtype])
    assert_close("lse", merged_lse, truth_lse, (1e-4, 1e-5))
    # The gradient flows through both the outputs and the LSEs of the parts.
    dout = torch.randn_like(merged)
    grads = torch.autograd.grad(merged, (q, k, v), dout)
    ref_grads = torch.autograd.grad(truth, leaves, dout.float())
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(name, got, want, BACKWARD_TOLERANCE[dtype])


def test_partial_lse_layouts_and_empty_rows():
    # 5-D: lse [B, G, H, M].
    q, k, v = (torch.randn(1, m, 2, 3, HEAD_DIM) for m in (4, 6, 6))
    out, lse = xf.memory_efficient_attention_partial(q, k, v)
    assert out.shape == q.shape and lse.shape == (1, 2, 3, 4)
    # Bottom-right causal with more queries than keys: the first rows see nothing, lse -inf, out 0.
    q, k, v = random_qkv(1, 6, 2, torch.float32)
    out, lse = xf.memory_efficient_attention_partial(q, k, v, attn_bias=xb.LowerTriangularFromBottomRightMask())
    assert torch.isneginf(lse[..., :4]).all() and torch.isfinite(lse[..., 4:]).all()
    assert (out[:, :4] == 0).all()
    # Merged with a part that sees every key, those rows take that part alone.
    other_out, other_lse = xf.memory_efficient_attention_partial(q, k, v)
    merged, merged_lse = merge_attentions([out, other_out], [lse, other_lse])
    assert torch.equal(merged[:, :4], other_out[:, :4]) and torch.equal(merged_lse[..., :4], other_lse[..., :4])
    # Nothing seen anywhere: out 0 and lse -inf, with finite gradients.
    merged, merged_lse = merge_attentions([out, out], [lse, lse])
    assert (merged[:, :4] == 0).all() and torch.isneginf(merged_lse[..., :4]).all()
    (merged.sum() + merged_lse[..., 4:].sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_partial_with_block_diagonal_padded_keys():
    bias, _, seqlen_q, seqlen_k = dict(BIAS_CASES)["padded-causal-offset"]()
    q, k, v = random_qkv(1, seqlen_q, seqlen_k, torch.float32)
    out, lse = xf.memory_efficient_attention_partial(q, k, v, attn_bias=bias)
    assert out.shape == q.shape and lse.shape == (1, HEADS, seqlen_q)
    truth, truth_lse = reference(q, k, v, full_bias(bias, 1, HEADS, seqlen_q, seqlen_k))
    assert_close("out", out, truth, FORWARD_TOLERANCE[torch.float32])
    assert torch.equal(torch.isneginf(lse), torch.isneginf(truth_lse))
    assert_close("lse", lse[torch.isfinite(lse)], truth_lse[torch.isfinite(truth_lse)], (1e-4, 1e-5))


def test_merge_attentions_forms_and_conventions():
    attn = torch.randn(3, 2, 5, 4, 8)          # [chunks, B, M, H, K]
    lse = torch.randn(3, 2, 4, 5)              # [chunks, B, H, M]
    lse[1, 0, 0, 0] = math.inf                 # flash-attn's "saw no key": weight 0, like -inf
    lse[2, 0, 0, 0] = -math.inf
    stacked_out, stacked_lse = merge_attentions(attn, lse)
    listed_out, listed_lse = merge_attentions(list(attn), list(lse))
    assert torch.equal(stacked_out, listed_out) and torch.equal(stacked_lse, listed_lse)
    clean = lse.masked_fill(torch.isinf(lse), -math.inf)
    weights = torch.softmax(clean, dim=0)      # (chunks, B, H, M)
    expected = (weights.permute(0, 1, 3, 2)[..., None] * attn).sum(0)
    torch.testing.assert_close(stacked_out, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stacked_lse, torch.logsumexp(clean, dim=0), atol=1e-6, rtol=1e-5)
    # 5-D chunks: [B, M, G, H, K] with lse [B, G, H, M].
    out5, lse5 = merge_attentions(attn.unsqueeze(3), lse.unsqueeze(2))
    assert torch.equal(out5[:, :, 0], stacked_out) and torch.equal(lse5[:, 0], stacked_lse)
    out, no_lse = merge_attentions(attn, lse, write_lse=False, output_dtype=torch.float16)
    assert no_lse is None and out.dtype == torch.float16


def test_merge_attentions_gradient_matches_autograd_of_the_formula():
    attn = torch.randn(2, 1, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    lse = torch.randn(2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: merge_attentions(a, s), (attn, lse))


# --------------------------------------------------------------------------------- errors


def test_errors_have_xformers_meaning():
    q, k, v = random_qkv(2, 5, 6, torch.float32)
    with pytest.raises(ValueError, match="must broadcast to"):
        xf.memory_efficient_attention(q, k, v, attn_bias=torch.randn(2, HEADS, 6, 5))
    with pytest.raises(ValueError, match="must broadcast to"):
        xf.memory_efficient_attention(q, k, v, attn_bias=xb.LowerTriangularMaskWithTensorBias(torch.randn(3, 1, 5, 6)))
    block = xb.BlockDiagonalMask.from_seqlens([2, 3], [3, 3], device="cpu")
    with pytest.raises(ValueError, match="batch size 1"):
        xf.memory_efficient_attention(q, k, v, attn_bias=block)
    q1, k1, v1 = random_qkv(1, 5, 7, torch.float32)
    with pytest.raises(ValueError, match="key positions"):
        xf.memory_efficient_attention(q1, k1, v1, attn_bias=block)
    with pytest.raises(ValueError, match="query positions"):
        xf.memory_efficient_attention(q1[:, :4], k1[:, :6], v1[:, :6], attn_bias=block)
    with pytest.raises(ValueError, match="on one device|holds its sequence tensors"):
        on_meta = xb.BlockDiagonalMask.from_seqlens([2, 3], [3, 3], device="meta")
        xf.memory_efficient_attention(q1, k1[:, :6], v1[:, :6], attn_bias=on_meta)
    with pytest.raises(NotImplementedError, match="value's last dimension"):
        xf.memory_efficient_attention(q, k, torch.randn(2, 6, HEADS, 8))
    with pytest.raises(ValueError, match="must all be"):
        xf.memory_efficient_attention(q, k[:, :, 0], v)
    # [B, M, H, K] needs query's H on key and value, expanded (stride 0) or not, as xFormers does.
    for heads in (HEADS - 1, HEADS + 1):
        with pytest.raises(ValueError, match="query's H"):
            xf.memory_efficient_attention(q, k[:, :, :1].expand(-1, -1, heads, -1),
                                          v[:, :, :1].expand(-1, -1, heads, -1))
    with pytest.raises(ValueError, match="query's H"):
        xf.memory_efficient_attention(q, k[:, :, :1], v[:, :, :1])
    # Scalar arguments are named as xFormers names them.
    for entry in (xf.memory_efficient_attention, xf.memory_efficient_attention_partial):
        with pytest.raises(ValueError, match=r"^p must be in \[0, 1\)"):
            entry(q, k, v, p=1.5)
        with pytest.raises(TypeError, match=r"^scale must be a float"):
            entry(q, k, v, scale="0.5")
        with pytest.raises(ValueError, match=r"^scale must be finite"):
            entry(q, k, v, scale=float("nan"))
    with pytest.raises(NotImplementedError, match="not supported"):
        xf.memory_efficient_attention(q, k, v, attn_bias=xb.AttentionBias())


def test_top_left_blocks_with_different_offsets_are_refused_not_approximated():
    # Block 0 has 2 more queries than keys, block 1 one more: two windows, one varlen call.
    bias = xb.BlockDiagonalCausalMask.from_seqlens([4, 3], [2, 2], device="cpu")
    q, k, v = random_qkv(1, 7, 4, torch.float32)
    with pytest.raises(NotImplementedError, match="different flash-attn window"):
        xf.memory_efficient_attention(q, k, v, attn_bias=bias)
    # One block with fewer keys than queries beside one with more: windows (-1, 0) and (-1, 5).
    bias = xb.BlockDiagonalCausalMask.from_seqlens([5, 9], [8, 4], device="cpu")
    q, k, v = random_qkv(1, 14, 12, torch.float32)
    with pytest.raises(NotImplementedError, match=r"max\(num_queries - num_keys, 0\)"):
        xf.memory_efficient_attention(q, k, v, attn_bias=bias)


def test_numpy_integers_and_tensor_bias_moves():
    """xFormers takes any integer for a window (numpy's included), LowerTriangularMask(device=...), and a
    LowerTriangularMaskWithTensorBias's .to() converts its bias."""
    np = pytest.importorskip("numpy")
    for a, b in [(xb.LowerTriangularFromBottomRightLocalAttentionMask(np.int64(3)),
                  xb.LowerTriangularFromBottomRightLocalAttentionMask(3)),
                 (xb.LowerTriangularFromBottomRightMask().make_local_attention(np.int32(3)),
                  xb.LowerTriangularFromBottomRightLocalAttentionMask(3)),
                 (xb.LocalAttentionFromBottomRightMask(np.int64(2), np.int16(0)),
                  xb.LocalAttentionFromBottomRightMask(2, 0))]:
        assert torch.equal(a.materialize((5, 7)), b.materialize((5, 7)))
    blocks = xb.BlockDiagonalMask.from_seqlens([3, 4], [5, 4], device="cpu")
    assert torch.equal(blocks.make_local_attention(np.int32(2)).materialize((7, 9)),
                       blocks.make_local_attention(2).materialize((7, 9)))
    assert type(blocks.make_local_attention(np.int32(2))._window_size) is int
    assert torch.equal(xb.LowerTriangularMask(device="cpu").materialize((3, 4)),
                       xb.LowerTriangularMask().materialize((3, 4)))
    bias = torch.randn(2, 3, 4, requires_grad=True)
    moved = xb.LowerTriangularMaskWithTensorBias(bias).to(torch.float64)
    assert moved._subtensor.dtype == torch.float64
    moved._subtensor.sum().backward()
    assert torch.equal(bias.grad, torch.ones_like(bias))
    assert xb.LowerTriangularMaskWithTensorBias(bias).to("meta")._subtensor.device.type == "meta"


def test_bias_constructors_check_their_arguments():
    with pytest.raises(ValueError, match="num_keys >= num_queries"):
        xb.BlockDiagonalMask.from_seqlens([3], [2], device="cpu").make_causal_from_bottomright()
    with pytest.raises(ValueError, match="window_size"):
        xb.LowerTriangularFromBottomRightLocalAttentionMask(0)
    with pytest.raises(ValueError, match="window_left"):
        xb.LocalAttentionFromBottomRightMask(-1, 2)
    with pytest.raises(ValueError, match="window_right"):
        xb.BlockDiagonalLocalAttentionPaddedKeysMask.from_seqlens_local([1], 4, [3], 1, 1.5, device="cpu")
    with pytest.raises(ValueError, match="window_size"):
        xb.LowerTriangularFromBottomRightLocalAttentionMask(True)
    with pytest.raises(RuntimeError, match="no key"):
        xb.BlockDiagonalMask.from_seqlens([5], [2], device="cpu").make_local_attention(3)
    with pytest.raises(ValueError, match="padding"):
        xb.BlockDiagonalPaddedKeysMask.from_seqlens([1], 4, [5], device="cpu")


def test_partial_and_merge_errors():
    q, k, v = random_qkv(1, 4, 5, torch.float32)
    with pytest.raises(NotImplementedError, match="dropout"):
        xf.memory_efficient_attention_partial(q, k, v, p=0.1)
    with pytest.raises(ValueError, match="tensor bias"):
        xf.memory_efficient_attention_partial(q, k, v, attn_bias=torch.zeros(1, HEADS, 4, 5))
    out, lse = xf.memory_efficient_attention_partial(q, k, v)
    with pytest.raises(ValueError, match="write_lse"):
        merge_attentions([out, out], [lse, lse], write_lse=False)
    with pytest.raises(ValueError, match="as many"):
        merge_attentions([out, out], [lse])
    with pytest.raises(ValueError, match="do not match"):
        merge_attentions([out, out[:, :3]], [lse, lse[..., :3]])
    _, paged, _ = paged_case(xb.PagedBlockDiagonalPaddedKeysMask)
    q6, k6, v6 = random_qkv(1, 6, 27, torch.float32)
    with pytest.raises(ValueError, match="page_size"):
        xf.memory_efficient_attention(q6, k6, v6, attn_bias=paged)
