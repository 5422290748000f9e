"""Dropout on the attention probabilities: rate, reproducibility, and exactness given the mask.

The mask comes from a counter-based RNG (Philox in the kernels; a per-block torch generator on
the CPU path), seeded from torch's generator for q's device.  With return_attn_probs=True the
third output, S_dmask, holds the probabilities with dropped entries negated, and out and the
gradients must match the float64 reference that applies that same mask (flash-attn's rule).
"""

import pytest
import torch

from flashtron import flash_attn_func
from test_flash_attn import DTYPES, check_against_oracle, random_inputs


def test_dropped_fraction_matches_p():
    q, k, v = (torch.randn(2, 256, 4, 16) for _ in range(3))
    for p in (0.1, 0.37):
        _, _, s_dmask = flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True)
        dropped = (s_dmask < 0).float().mean().item()  # every probability is > 0 here (no mask)
        assert abs(dropped - p) < 0.01, (p, dropped)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_out_and_grads_match_reference_with_the_returned_mask(causal, dtype):
    check_against_oracle(*random_inputs((2, 73, 91, 4, 2, 40), dtype), causal, dropout_p=0.17)


def test_dropout_with_other_variants():
    q, k, v = random_inputs((1, 80, 50, 6, 3, 32), torch.float32)
    check_against_oracle(q, k, v, True, dropout_p=0.3, window_size=(25, -1), softcap=4.0,
                         alibi_slopes=torch.rand(6), sinks=torch.randn(6, requires_grad=True))


def test_manual_seed_reproduces_and_seeds_differ():
    q, k, v = random_inputs((1, 64, 64, 2, 2, 16), torch.float32)
    torch.manual_seed(1234)
    first = flash_attn_func(q, k, v, dropout_p=0.25)
    torch.manual_seed(1234)
    again = flash_attn_func(q, k, v, dropout_p=0.25)
    other = flash_attn_func(q, k, v, dropout_p=0.25)  # next seed from the same generator
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_backward_regenerates_the_forward_mask():
    # Two backward passes through one forward must agree bit for bit (the mask is recomputed).
    q, k, v = random_inputs((1, 45, 61, 2, 1, 24), torch.bfloat16)
    out = flash_attn_func(q, k, v, dropout_p=0.2, causal=True)
    dout = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v), dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
