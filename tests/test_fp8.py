"""FP8 forward: q, k, v in float8_e4m3fn with per-(batch, kv head) descale factors, bf16 output.

The truth is float64 attention on the dequantised inputs (fp8 value x descale).  The yardstick is
the same computation in PyTorch with fp8 rounding of the probabilities (the inputs are fp8
already): flashtron's error may be at most 2x that (issue 6's rule).
"""

import math

import pytest
import torch

from flashtron import flash_attn_func, flash_attn_varlen_func
from reference import assert_within_rule, visible_mask

FP8 = torch.float8_e4m3fn


def fp8_inputs(batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, device="cpu"):
    """Random fp8 tensors spread over e4m3's range, and random descales around 1."""
    make = lambda s, h: (torch.randn(batch, s, h, head_dim, device=device) * 3).to(FP8)  # noqa: E731
    descales = [torch.rand(batch, heads_kv, device=device) + 0.25 for _ in range(3)]
    return make(seqlen_q, heads), make(seqlen_k, heads_kv), make(seqlen_k, heads_kv), descales


def dequantized(t, scale):
    group = t.shape[2] // scale.shape[1]
    return t.double() * scale.double().repeat_interleave(group, dim=1)[:, None, :, None]


def reference(q, k, v, descales, causal=False, window=(-1, -1), softcap=0.0, round_probabilities=False):
    """(out, lse, envelope) in float64; with round_probabilities the softmax output is rounded to fp8 first.
    envelope: per (batch, head, query), softmax_scale x the largest sum over the head dim of |q| |k| among the keys
    the query sees, the magnitude that the error of an fp8 score's accumulation scales with."""
    qf, kf, vf = (dequantized(t, s) for t, s in zip((q, k, v), descales))
    group = q.shape[2] // k.shape[2]
    kf, vf = kf.repeat_interleave(group, dim=2), vf.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * q.shape[-1] ** -0.5
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    keep = visible_mask(q.shape[1], k.shape[1], window[0], 0 if causal else window[1], q.device)
    scores = scores.masked_fill(~keep, -math.inf)
    lse = torch.logsumexp(scores, dim=-1).masked_fill(~keep.any(-1), math.inf)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    if round_probabilities:
        probs = probs.float().to(FP8).double()
    magnitudes = torch.einsum("bqhd,bkhd->bhqk", qf.abs(), kf.abs()) * q.shape[-1] ** -0.5
    envelope = magnitudes.masked_fill(~keep, 0.0).amax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, vf), lse, envelope


def check(q, k, v, descales, causal=False, window=(-1, -1), softcap=0.0):
    variants = dict(window=window, softcap=softcap)
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, q_descale=descales[0], k_descale=descales[1],
                                  v_descale=descales[2], return_attn_probs=True, window_size=window,
                                  softcap=softcap)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    truth, truth_lse, envelope = reference(q, k, v, descales, causal, **variants)
    plain = reference(q, k, v, descales, causal, round_probabilities=True, **variants)[0]
    assert_within_rule("out", out.cpu(), truth.cpu(), plain.cpu(), 2)
    seen = torch.isfinite(truth_lse)
    assert torch.equal(torch.isinf(lse), ~seen)
    # The scores come from fp8 tensor cores, whose accumulation keeps ~13 mantissa bits, truncated (as in
    # FlashAttention-3), so a score is good to a few 2^-13 of the sum of its products' magnitudes (the envelope),
    # and lse, a smooth maximum of scores, to as much: 2^-10 allows 8 such steps.  (The bound it replaces, 1e-3
    # of lse's largest magnitude, refused a D = 256 causal call on an H200 at 0.055 against lse ~50.)  The
    # output's rule above is unaffected, since the same scores normalise it.  Plus float32's rounding of lse itself
    # (a zero descale makes every score, and the envelope, 0).
    error = (lse[seen] - truth_lse[seen]).abs()
    bound = 2.0 ** -10 * envelope[seen] + 2.0 ** -18 * truth_lse[seen].abs().clamp(min=1.0)
    assert (error <= bound).all(), (error / bound).max().item()
    return out


@pytest.mark.parametrize("shape", [(2, 67, 45, 4, 2, 32), (1, 33, 130, 3, 1, 64), (2, 17, 17, 2, 2, 128)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fp8_matches_oracle(shape, causal):
    q, k, v, descales = fp8_inputs(*shape)
    check(q, k, v, descales, causal)


def test_fp8_with_window_and_softcap():
    q, k, v, descales = fp8_inputs(2, 50, 60, 4, 2, 32)
    check(q, k, v, descales, window=(12, 3), softcap=8.0)


@pytest.mark.parametrize("window", [(-1, -1), (9, 0)], ids=["causal", "window"])
def test_fp8_negative_and_zero_descales(window):
    """Descales are the caller's numbers: a negative product of q's and k's flips the scores, a zero one makes
    every score 0 (uniform probabilities over the visible keys), a negative v descale flips the output.  Masked
    scores must stay -inf whatever the scale's sign (-inf times 0 is NaN)."""
    q, k, v, descales = fp8_inputs(2, 37, 45, 4, 2, 32)
    descales[0][0, 1] = -descales[0][0, 1]
    descales[1][1, 0] = 0.0
    descales[2][1, 1] = -descales[2][1, 1]
    out = check(q, k, v, descales, causal=True, window=window)
    assert torch.isfinite(out).all()


def test_fp8_descales_default_to_one():
    q, k, v, _ = fp8_inputs(1, 20, 20, 2, 2, 16)
    ones = [torch.ones(1, 2) for _ in range(3)]
    torch.testing.assert_close(flash_attn_func(q, k, v), flash_attn_func(q, k, v, q_descale=ones[0],
                                                                      k_descale=ones[1], v_descale=ones[2]))


def test_fp8_varlen_is_dense_per_sequence():
    lengths = [5, 0, 23]
    q, k, v, descales = fp8_inputs(len(lengths), max(lengths), max(lengths), 4, 2, 32)
    cu = torch.tensor([0, 5, 5, 28], dtype=torch.int32)
    pack = lambda t: torch.cat([t[b, :n] for b, n in enumerate(lengths)])  # noqa: E731
    out = flash_attn_varlen_func(pack(q), pack(k), pack(v), cu, cu, max(lengths), max(lengths), causal=True,
                                 q_descale=descales[0], k_descale=descales[1], v_descale=descales[2])
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        per_seq = [s[b:b + 1] for s in descales]
        expected = check(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], per_seq, causal=True)
        torch.testing.assert_close(out[int(cu[b]):int(cu[b]) + n], expected[0], atol=2e-2, rtol=2e-2)


def test_fp8_errors():
    q, k, v, descales = fp8_inputs(1, 8, 8, 2, 2, 16)
    with pytest.raises(ValueError, match="q_descale applies to float8_e4m3fn inputs only"):
        flash_attn_func(q.float(), k.float(), v.float(), q_descale=descales[0])
    with pytest.raises(ValueError, match=r"k_descale must have shape \(batch, num_heads_k\)"):
        flash_attn_func(q, k, v, k_descale=torch.ones(2, 2))
    with pytest.raises(TypeError, match="v_descale must be float32"):
        flash_attn_func(q, k, v, v_descale=torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="k has dtype torch.bfloat16"):
        flash_attn_func(q, k.to(torch.bfloat16), v)
    with pytest.raises(NotImplementedError, match="not dropout_p"):
        flash_attn_func(q, k, v, dropout_p=0.1)
    from flashtron import flash_attn_with_kvcache
    with pytest.raises(TypeError, match="only flash_attn_func and flash_attn_varlen_func"):
        flash_attn_with_kvcache(q, k, v, cache_seqlens=4)
    leaf = q.float().requires_grad_()
    out = flash_attn_func(leaf.to(FP8), k, v)
    with pytest.raises(NotImplementedError, match="no backward"):
        out.float().sum().backward()
    # Descales are not differentiated either, on any path (the CPU path used to carry a gradient to them).
    scale = descales[0].clone().requires_grad_()
    assert not flash_attn_func(q, k, v, q_descale=scale).requires_grad
