"""Attention variants (sliding window, softcap, ALiBi) against the float64 oracle.

The same compile-time switches of the same kernels as plain attention: every
case runs on the CPU path, and under TRITON_INTERPRET=1 through the Triton
kernels, with flash-attn's 2x / 3x error rule.
"""

import pytest
import torch

from flashtron import flash_attn_func
from reference import attention_reference, max_error
from test_flash_attn import DTYPES, check_against_oracle, random_inputs

# (shape, causal, window_size): left-only, right-only and two-sided bands, windows under causal,
# Sq > Sk (rows that see nothing) and Sq < Sk, GQA and MQA.
WINDOW_CASES = [
    ((2, 113, 113, 4, 2, 40), False, (17, 5)),
    ((1, 97, 203, 3, 1, 64), False, (-1, 8)),
    ((1, 203, 97, 2, 2, 59), False, (30, -1)),
    ((2, 150, 150, 4, 4, 32), True, (40, -1)),
    ((1, 77, 45, 2, 1, 128), True, (3, 7)),       # causal overrides right=7 with 0
    ((1, 64, 64, 2, 2, 16), False, (0, 0)),       # each query sees exactly one key
]


@pytest.mark.parametrize("shape,causal,window", WINDOW_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_sliding_window(shape, causal, window, dtype):
    check_against_oracle(*random_inputs(shape, dtype), causal, window_size=window)


def test_window_matches_explicit_band():
    # (0, 0) with Sq == Sk: out is v itself, whatever the scores.
    q, k, v = (torch.randn(1, 33, 2, 24) for _ in range(3))
    out = flash_attn_func(q, k, v, window_size=(0, 0))
    torch.testing.assert_close(out, v)


@pytest.mark.parametrize("side", [2 ** 30, 2 ** 31 - 10, 2 ** 31 - 1, 2 ** 31, 2 ** 40])
def test_huge_window_sides_bound_nothing(side):
    """A side near 2**31 made the kernels' int32 index sums wrap (every row saw no key; with a huge left side the
    gradients were off), and one past it failed the Hopper kernels' compile: such sides are unbounded."""
    q, k, v = random_inputs((1, 41, 37, 2, 2, 16), torch.float16)
    for window, causal in (((-1, side), False), ((side, -1), False), ((side, side), True)):
        expected = flash_attn_func(q, k, v, causal=causal)
        out = flash_attn_func(q, k, v, causal=causal, window_size=window)
        torch.testing.assert_close(out, expected, atol=0, rtol=0)
        grads = torch.autograd.grad(out, (q, k, v), out.detach())
        expected_grads = torch.autograd.grad(expected, (q, k, v), out.detach())
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, atol=0, rtol=0)


@pytest.mark.parametrize("softcap", [0.5, 5.0, 30.0])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_softcap(softcap, causal, dtype):
    q, k, v = random_inputs((2, 71, 89, 4, 2, 48), dtype)
    with torch.no_grad():
        q.mul_(3)  # scores of a few units, so the cap bends them
    check_against_oracle(q, k, v, causal, softcap=softcap)


@pytest.mark.parametrize("per_batch", [False, True], ids=["per_head", "per_batch_and_head"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_alibi(per_batch, causal, dtype):
    shape = (2, 67, 131, 4, 2, 32)
    slopes = torch.rand(2, 4) if per_batch else torch.rand(4)
    check_against_oracle(*random_inputs(shape, dtype), causal, alibi_slopes=slopes)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_all_variants_together(dtype):
    # Window, softcap, ALiBi, GQA and causal in one call, with rows that see no key (Sq > Sk).
    q, k, v = random_inputs((2, 90, 60, 6, 2, 40), dtype)
    check_against_oracle(q, k, v, True, window_size=(20, -1), softcap=4.0, alibi_slopes=torch.rand(2, 6),
                         softmax_scale=0.2)


def test_alibi_changes_the_result():
    # Guards against the slopes being ignored: the reference with and without ALiBi differ, and we follow.
    q, k, v = (torch.randn(1, 40, 2, 16) for _ in range(3))
    slopes = torch.tensor([0.7, 0.2])
    out = flash_attn_func(q, k, v, alibi_slopes=slopes)
    with_alibi, _ = attention_reference(q, k, v, alibi_slopes=slopes)
    without, _ = attention_reference(q, k, v)
    assert max_error(with_alibi, without) > 0.1
    assert max_error(out, with_alibi) < 1e-5


def test_fully_masked_rows_under_a_window():
    # Causal with Sq = 50 > Sk = 10: query i sees keys [i - 43, i - 40], so rows i < 40 see none.
    q, k, v = random_inputs((1, 50, 10, 2, 1, 16), torch.float32)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, window_size=(3, -1), return_attn_probs=True)
    assert (out[:, :40] == 0).all() and torch.isinf(lse[..., :40]).all()
    out.backward(torch.randn_like(out))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_deterministic_backward_is_bitwise_reproducible():
    q, k, v = random_inputs((2, 77, 93, 4, 2, 40), torch.bfloat16)
    dout = torch.randn_like(q)
    first = None
    for _ in range(5):
        out = flash_attn_func(q, k, v, causal=True, window_size=(30, -1), softcap=3.0, deterministic=True)
        grads = torch.autograd.grad(out, (q, k, v), dout)
        if first is None:
            first = grads
        for a, b in zip(grads, first):
            assert torch.equal(a, b)


SINK_CASES = [
    ((2, 61, 83, 4, 2, 40), False, {}),
    ((1, 90, 40, 3, 1, 64), True, {}),                                  # rows that see no key
    ((2, 77, 77, 4, 4, 32), True, dict(window_size=(16, -1), softcap=5.0)),
]


@pytest.mark.parametrize("shape,causal,extra", SINK_CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_sinks(shape, causal, extra, dtype):
    sinks = (torch.randn(shape[3]) * 2).requires_grad_()
    check_against_oracle(*random_inputs(shape, dtype), causal, sinks=sinks, **extra)


def test_sinks_lower_every_probability():
    # A huge sink takes almost all the mass: the output shrinks towards 0 and lse tends to the sink.
    q, k, v = (torch.randn(1, 20, 2, 16) for _ in range(3))
    out, lse, _ = flash_attn_func(q, k, v, sinks=torch.tensor([30.0, -30.0]), return_attn_probs=True)
    plain = flash_attn_func(q, k, v)
    assert out[:, :, 0].abs().max() < 1e-6
    torch.testing.assert_close(out[:, :, 1], plain[:, :, 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse[:, 0], torch.full_like(lse[:, 0], 30.0), atol=1e-4, rtol=0)
