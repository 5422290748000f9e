"""Variable-length batches on the Hopper kernels (hopper_forward.py and hopper_backward.py with VARLEN).

The packed sequences are one batch entry to the kernels' TMA boxes, so a box can reach the next
sequence's rows: these tests put sequences of every tail length side by side (and zero-length ones
between them) and hold each to the float64 oracle.  Gluon has no interpreter: they need an sm_90 GPU.
Every test checks that both Hopper kernels really ran.
"""

import pytest
import torch

from flashtron import flash_attn_func, flash_attn_varlen_func
from flashtron.kernels import hopper_backward, hopper_forward
from conftest import KERNEL_DEVICE, triton_kernel
from test_hopper_forward import count_calls, on_hopper
from test_varlen import check_varlen_against_oracle, cu_seqlens_of


@pytest.fixture
def launches(monkeypatch):
    """Counts both Hopper kernels' launches (forward, backward); the tests' short sequences take them."""
    monkeypatch.setattr(hopper_forward, "MIN_SEQLEN", dict.fromkeys(hopper_forward.MIN_SEQLEN, (0, 0)))
    monkeypatch.setattr(hopper_backward, "MIN_SEQLEN", dict.fromkeys(hopper_backward.MIN_SEQLEN, (0, 0)))
    return (count_calls(monkeypatch, hopper_forward, "forward", lambda args: args[0].shape),
            count_calls(monkeypatch, hopper_backward, "backward", lambda args: args[1].shape))


def _took_both(launches):
    forward_calls, backward_calls = launches
    assert forward_calls and backward_calls, "the call did not take both Hopper kernels"
    torch.cuda.empty_cache()


# (lengths_q, lengths_k): tails of every size next to each other, zero-length and one-token sequences, Sq < Sk
# and Sq > Sk (under causal, rows that see nothing), one key block and many.
BATCHES = [
    ([300, 0, 129, 1, 640, 77], [300, 0, 129, 1, 640, 77]),
    ([5, 400, 0, 71, 1000], [290, 3, 12, 71, 1500]),
    ([1, 1, 1, 1], [700, 64, 0, 129]),
    ([1000, 1300, 2], [130, 1000, 700]),
]
over_batches = pytest.mark.parametrize("lengths", BATCHES, ids=["self", "cross", "decode", "long"])


@pytest.mark.gpu
@on_hopper
@over_batches
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("heads", [(4, 4, 128), (6, 2, 128), (4, 1, 64)], ids=["mha128", "gqa128", "mqa64"])
def test_matches_oracle(lengths, causal, dtype, heads, launches):
    check_varlen_against_oracle(*lengths, *heads, dtype, causal, device="cuda")
    _took_both(launches)


@pytest.mark.gpu
@on_hopper
@over_batches
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (100, 0)], ids=lambda w: f"{w[0]}_{w[1]}")
def test_head_dim_256_forward(lengths, window, launches):
    """D = 256: the Gluon forward, the portable backward (hopper_backward has no D = 256 entry)."""
    check_varlen_against_oracle(*lengths, 4, 2, 256, torch.bfloat16, False, device="cuda", window_size=window)
    forward_calls, backward_calls = launches
    assert forward_calls and not backward_calls
    torch.cuda.empty_cache()


@pytest.mark.gpu
@on_hopper
def test_portable_forward_then_gluon_backward(monkeypatch):
    """With the shipped thresholds a causal batch at D = 64 with sequences up to 1k tokens runs the portable forward
    and the Gluon backward, which reads the portable kernel's lse."""
    forward_calls = count_calls(monkeypatch, hopper_forward, "forward", lambda args: args[0].shape)
    backward_calls = count_calls(monkeypatch, hopper_backward, "backward", lambda args: args[1].shape)
    check_varlen_against_oracle([1000, 0, 129, 1024, 77], [1000, 0, 129, 1024, 77], 4, 2, 64, torch.bfloat16, True,
                                device="cuda")
    assert not forward_calls and backward_calls


@pytest.mark.gpu
@on_hopper
@over_batches
@pytest.mark.parametrize("window", [(100, 0), (300, 50), (-1, 200)], ids=lambda w: f"{w[0]}_{w[1]}")
def test_windows_match_oracle(lengths, window, launches):
    check_varlen_against_oracle(*lengths, 4, 2, 128, torch.bfloat16, False, device="cuda", window_size=window)
    _took_both(launches)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("window", [(100, 0), (300, 50)], ids=lambda w: f"{w[0]}_{w[1]}")
def test_persistent_backward_and_longer_max_seqlen(window, launches, monkeypatch):
    """Windows run the backward persistent (programs carry ring phases across tiles, many of them past
    their sequence's end here); max_seqlen larger than the longest sequence adds tiles with nothing to do."""
    monkeypatch.setattr(hopper_backward.hardware, "sm_count", lambda device: 3)
    check_varlen_against_oracle(*BATCHES[1], 4, 2, 128, torch.bfloat16, False, max_slack=300, device="cuda",
                                window_size=window)
    _took_both(launches)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_equal_lengths_match_the_dense_kernels(causal, launches):
    """Sequences of one length packed are the dense call: the same tiles, the same arithmetic."""
    batch, seqlen, heads, head_dim = 3, 777, 4, 128
    q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    dout = torch.randn_like(q)
    out = flash_attn_func(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    cu = cu_seqlens_of([seqlen] * batch, "cuda")
    packed = [t.detach().reshape(batch * seqlen, heads, head_dim).requires_grad_() for t in (q, k, v)]
    out_varlen = flash_attn_varlen_func(*packed, cu, cu, seqlen, seqlen, causal=causal)
    grads_varlen = torch.autograd.grad(out_varlen, packed, dout.reshape(batch * seqlen, heads, head_dim))
    assert len(launches[0]) == 2 and len(launches[1]) == 2
    torch.testing.assert_close(out_varlen.view_as(out), out, atol=0, rtol=0)
    for ours, dense in zip(grads_varlen, grads):
        # dQ's float32 sums land in another order; dK and dV have one writer each.
        torch.testing.assert_close(ours.view_as(dense), dense, atol=2e-2, rtol=1e-2)


@triton_kernel  # the launcher serves the Triton paths
def test_packed_calls_reach_the_kernels_as_one_batch_entry(monkeypatch):
    """On the GPU and under the interpreter: the launcher offers a packed call to both Hopper kernels as
    (1, total, H, D) tensors with the longest lengths, and does not offer calls with seqused (they keep the
    portable kernels)."""
    device = KERNEL_DEVICE
    seen = []

    def refuse(*args, **kwargs):
        seen.append(args)
        return "recorded"

    monkeypatch.setattr(hopper_forward, "unsupported_reason", refuse)
    monkeypatch.setattr(hopper_backward, "unsupported_reason", refuse)
    lengths = [37, 0, 130]
    q, k, v = (torch.randn(sum(lengths), 4, 64, device=device, requires_grad=True) for _ in range(3))
    cu = cu_seqlens_of(lengths, device)
    out = flash_attn_varlen_func(q, k, v, cu, cu, 150, 140, causal=True)
    out.sum().backward()
    (fwd_q, fwd_k, fwd_v, *_, fwd_plain, fwd_seqlens), (dout, bwd_q, *_, bwd_plain, bwd_seqlens) = seen
    assert fwd_q.shape == bwd_q.shape == dout.shape == (1, 167, 4, 64) and fwd_k.shape == fwd_v.shape == (1, 167, 4, 64)
    assert fwd_seqlens == bwd_seqlens == (150, 140) and fwd_plain and bwd_plain
    seen.clear()
    used = torch.tensor([30, 0, 100], dtype=torch.int32, device=device)
    flash_attn_varlen_func(q, k, v, cu, cu, 150, 140, seqused_q=used, seqused_k=used).sum().backward()
    assert seen == []  # not plain: neither the forward nor the backward asks the Hopper kernels
