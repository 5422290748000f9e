"""The Hopper backward (kernels/hopper_backward.py): which calls it takes, and that it keeps the contract.

Gluon has no interpreter, so its numerical tests need an sm_90 GPU (marked `gpu`).  Every GPU test
checks that the gradients really came from the Hopper kernel.
"""

import pytest
import torch
import triton

from flashtron import flash_attn_func, flash_attn_qkvpacked_func, ops
from flashtron.kernels import hardware, hopper_backward, hopper_forward, launch
from flashtron.kernels.backward import attention_backward_postprocess
from conftest import KERNEL_DEVICE, triton_kernel
from test_flash_attn import check_against_oracle, random_inputs
from test_hopper_forward import check_on_hopper, count_calls, on_hopper, over_shapes, over_windows


def test_cpu_tensors_take_the_portable_kernels():
    q, k, v = random_inputs((1, 9, 9, 2, 2, 128), torch.bfloat16)
    assert hopper_backward.unsupported_reason(q, q, k, v, 0.1, -1, -1, 0.0, None, None, 0.0, True) is not None


@triton_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_postprocess_scales_and_rounds_dq(dtype):
    """The kernel's last pass (plain Triton: it runs under the interpreter too): dQ = scale * the float32 sums,
    rounded once, over a length that leaves the last program part-full."""
    device = KERNEL_DEVICE
    block = hopper_backward.POSTPROCESS_BLOCK
    accum = torch.randn(2 * block + 37, device=device) * 100
    dq = torch.full(accum.shape, float("nan"), dtype=dtype, device=device)
    scale = 0.3 + torch.rand(()).item()
    attention_backward_postprocess[(3, )](accum, dq, accum.numel(), scale, 1, 1, 1, 1, BLOCK=block,
                                          UPCAST=launch._upcast(dtype), STRIDED=False)
    assert torch.equal(dq, (accum * scale).to(dtype))  # one float32 product, one rounding to nearest even


@triton_kernel
def test_postprocess_writes_into_a_part_of_a_packed_gradient():
    """STRIDED: dQ as the middle part of a packed (batch, seqlen, 3, heads, headdim) gradient, whose other parts
    the pass leaves as they were."""
    batch, seqlen, heads, head_dim = 3, 37, 2, 16
    accum = torch.randn(batch, seqlen, heads, head_dim, device=KERNEL_DEVICE) * 100
    packed = torch.full((batch, seqlen, 3, heads, head_dim), float("nan"), dtype=torch.float16, device=KERNEL_DEVICE)
    dq = packed[:, :, 1]
    scale = 0.3 + torch.rand(()).item()
    block = 256
    attention_backward_postprocess[(triton.cdiv(accum.numel(), block), )](
        accum, dq, accum.numel(), scale, heads * head_dim, seqlen, dq.stride(1), dq.stride(0), BLOCK=block,
        UPCAST=launch._upcast(torch.float16), STRIDED=True)
    assert torch.equal(dq, (accum * scale).to(torch.float16))
    assert packed[:, :, 0::2].isnan().all()


def test_head_dims_only_the_forward_takes_keep_the_portable_backward(monkeypatch):
    """D = 256 runs forward on the Hopper kernel, backward on the portable ones."""
    monkeypatch.setattr(hardware, "capability", lambda device: (9, 0))
    monkeypatch.setattr(hopper_forward, "_GLUON", True)
    q = torch.empty(1, 4096, 2, 256, dtype=torch.bfloat16)
    assert hopper_forward.unsupported_reason(q, q, q, 0.1, -1, 0, 0.0, None, None, 0.0, True) is None
    for window_right in (-1, 0):
        assert "head dim 256" in hopper_backward.unsupported_reason(q, q, q, q, 0.1, -1, window_right, 0.0, None, None,
                                                                    0.0, True)


def test_every_head_dim_the_backward_takes_has_a_dq_layout():
    """The launcher picks dQ's box from DQ_BY_KEYS by head dim: a head dim the kernel accepts without an entry would
    fail there, after the delta pass had run.  At D = 128 dQ stays split by columns (a whole-width part spilled)."""
    assert {d for d, _ in hopper_backward.MIN_SEQLEN} <= set(hopper_backward.DQ_BY_KEYS)
    assert not hopper_backward.DQ_BY_KEYS[128]


@pytest.mark.parametrize("head_dim", [64, 128])
def test_short_sequences_keep_the_portable_kernels(monkeypatch, head_dim):
    monkeypatch.setattr(hopper_backward.hopper_forward, "unsupported_reason", lambda *args, **kwargs: None)
    monkeypatch.setattr(hopper_backward, "_box", lambda t: ([1], [1]))
    reason = lambda sq, sk, window, seqlens=None: hopper_backward.unsupported_reason(  # noqa: E731
        *(torch.empty(1, sq, 2, head_dim),) * 2, *(torch.empty(1, sk, 2, head_dim),) * 2, 0.1, *window, 0.0,
        None, None, 0.0, True, seqlens)
    for window in ((-1, -1), (-1, 0), (256, 0), (-1, 300)):
        limit, varlen_limit = hopper_backward.MIN_SEQLEN[head_dim, window != (-1, -1)]
        assert reason(limit - 1, limit - 1, window) is not None
        assert reason(limit, limit, window) is None
        assert reason(1, limit, window) is None and reason(limit, 1, window) is None  # the longer side decides
        assert reason(9000, 9000, window, (varlen_limit - 1, 1)) is not None
        assert reason(9000, 9000, window, (1, varlen_limit)) is None  # the longest sequence decides


def test_variable_length_backward_need_not_follow_the_forward(monkeypatch):
    """At D = 64 a causal variable-length batch of 1k-token sequences takes the portable forward and the Gluon
    backward (their thresholds differ, measured in BENCHMARKS.md session 18)."""
    monkeypatch.setattr(hardware, "capability", lambda device: (9, 0))
    monkeypatch.setattr(hopper_forward, "_GLUON", True)
    packed = torch.empty(1, 5000, 2, 64, dtype=torch.bfloat16)
    args = (0.1, -1, 0, 0.0, None, None, 0.0, True, (1024, 1024))
    assert "short" in hopper_forward.unsupported_reason(packed, packed, packed, *args)
    assert hopper_backward.unsupported_reason(packed, packed, packed, packed, *args) is None


def test_causal_head_groups_make_about_one_round_of_programs():
    """The causal tile order's group of heads (_head_group): the SM count over the key blocks per head, between
    one head and all of them."""
    group = hopper_backward._head_group
    assert group(128, 16, 132) == 8 and group(256, 8, 132) == 16 and group(64, 32, 132) == 4
    assert group(16, 128, 132) == 1 and group(16, 999, 132) == 1  # never fewer than one head
    assert group(3, 16, 132) == 3  # never more than there are


@pytest.fixture
def launches(monkeypatch):
    """Counts the Hopper backward's launches; the tests' short sequences take it too."""
    monkeypatch.setattr(hopper_backward, "MIN_SEQLEN", dict.fromkeys(hopper_backward.MIN_SEQLEN, (0, 0)))
    monkeypatch.setattr(hopper_forward, "MIN_SEQLEN", dict.fromkeys(hopper_forward.MIN_SEQLEN, (0, 0)))
    return count_calls(monkeypatch, hopper_backward, "backward", lambda args: args[1].shape)


@pytest.mark.gpu
@on_hopper
@over_shapes
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_matches_oracle(shape, causal, dtype, launches):
    check_on_hopper(launches, shape, dtype, causal)


@pytest.mark.gpu
@on_hopper
@over_shapes
@over_windows
def test_windows_match_oracle(shape, window, launches):
    check_on_hopper(launches, shape, torch.bfloat16, False, window_size=window)


@pytest.mark.gpu
@on_hopper
@over_shapes
@pytest.mark.parametrize("window", [(100, 0), (300, 50), (-1, 0), (-1, -1)], ids=lambda w: f"{w[0]}_{w[1]}")
@pytest.mark.parametrize("programs", [1, 3])
def test_persistent_programs_take_many_tiles(shape, window, programs, launches, monkeypatch):
    """The persistent build (one program per SM, each taking its next tile from a counter as it finishes one: the
    tile numbers' hand-over to the consumers, ring phases, the K/V hand-over and key blocks no query sees carried
    from tile to tile), for every shape and mask, also those `_persistent` gives one program per tile.  The SM
    count is lowered to give every program many tiles; the forward then takes the windowed tiles across heads
    (hopper_forward.across_heads)."""
    if window[0] >= 0:
        assert hopper_forward.across_heads(1, *window, None, programs)
        assert hopper_backward._persistent(shape[-1], *window, None, 100000)
    monkeypatch.setattr(hopper_backward, "_persistent", lambda *args: True)
    monkeypatch.setattr(hopper_backward.hardware, "sm_count", lambda device: programs)
    check_on_hopper(launches, shape, torch.bfloat16, False, window_size=window)


def test_persistent_schedule_by_length_head_dim_and_mask():
    """Which calls run the persistent build (`_persistent`): windows with a left edge always; dense calls up to
    PERSISTENT_UP_TO tokens at D = 128 with any mask and at D = 64 with a right edge; nothing longer, and no
    variable-length batch without a left edge."""
    persistent, limit = hopper_backward._persistent, hopper_backward.PERSISTENT_UP_TO
    varlen = (None, None, limit, limit)
    for head_dim in (64, 128):
        assert persistent(head_dim, 1024, 0, None, 10 * limit) and persistent(head_dim, 0, -1, varlen, 10 * limit)
        assert persistent(head_dim, -1, 0, None, limit) and persistent(head_dim, -1, 300, None, limit)
        assert not persistent(head_dim, -1, 0, None, limit + 1)
        assert not persistent(head_dim, -1, 0, varlen, limit)
    assert persistent(128, -1, -1, None, limit) and not persistent(128, -1, -1, None, limit + 1)
    assert not persistent(64, -1, -1, None, 1024)


def _gradients(q, k, v, dout, window):
    out = flash_attn_func(q, k, v, window_size=window)
    return torch.autograd.grad(out, (q, k, v), dout)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("shape", [(1, 1000, 1000, 5, 5, 128), (5, 333, 777, 4, 2, 64), (3, 777, 333, 4, 1, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_causal_head_groups(shape, launches, monkeypatch):
    """Causal tiles go in groups of heads (_tile).  Every group size, with a last group of fewer heads or
    not, gives the same dK and dV bits (each key block's sums run in the same order whichever program takes
    it), dQ equal up to the order of its float32 sums, and gradients within the oracle's rule."""
    q, k, v = random_inputs(shape, torch.bfloat16, "cuda")
    dout = torch.randn_like(q)
    grads = {}
    for group in (1, 2, 3, 99):
        monkeypatch.setattr(hopper_backward, "_head_group", lambda *args, group=group: group)
        grads[group] = _gradients(q, k, v, dout, (-1, 0))
    for group in (1, 2, 3):
        assert torch.equal(grads[group][1], grads[99][1]) and torch.equal(grads[group][2], grads[99][2])
        scale = grads[99][0].float().abs().max().item()
        assert (grads[group][0].float() - grads[99][0].float()).abs().max().item() <= 0.01 * scale
    assert len(launches) == 4
    check_on_hopper(launches, shape, torch.bfloat16, True)  # the last size set (all heads), which 1-3 equal above


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("shape", [(3, 1500, 1700, 8, 2, 128), (1, 3001, 2999, 4, 1, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_close_to_portable_kernels(shape, launches, monkeypatch):
    q, k, v = random_inputs(shape, torch.bfloat16, "cuda")
    dout = torch.randn_like(q)
    for window in ((-1, -1), (-1, 0), (700, 0)):
        grads = _gradients(q, k, v, dout, window)
        count = len(launches)
        monkeypatch.setattr(hopper_backward, "_DISABLED", True)
        reference = _gradients(q, k, v, dout, window)
        monkeypatch.setattr(hopper_backward, "_DISABLED", False)
        assert len(launches) == count
        # Same products; dQ is summed in another order (float32 atomics) and rounded once.
        for ours, ref in zip(grads, reference):
            scale = ref.float().abs().max().item()
            assert (ours.float() - ref.float()).abs().max().item() <= 0.02 * scale
    assert len(launches) == 3


@pytest.mark.gpu
@on_hopper
def test_packed_qkv_gradients(launches):
    qkv = torch.randn(2, 999, 3, 4, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = flash_attn_qkvpacked_func(qkv, causal=True, softmax_scale=0.05)
    out.backward(torch.randn_like(out))
    assert launches and torch.isfinite(qkv.grad).all()
    q, k, v = (qkv[:, :, i].detach().clone().requires_grad_() for i in range(3))
    check_against_oracle(q, k, v, True, softmax_scale=0.05)


@pytest.mark.gpu
@on_hopper
def test_unsupported_calls_fall_back(launches):
    q, k, v = random_inputs((1, 300, 300, 2, 2, 128), torch.bfloat16, "cuda")
    check_against_oracle(q, k, v, True, alibi_slopes=torch.rand(2, device="cuda"))
    check_against_oracle(q, k, v, False, softcap=5.0)
    q96, k96, v96 = random_inputs((1, 300, 300, 2, 2, 96), torch.bfloat16, "cuda")
    check_against_oracle(q96, k96, v96, False)
    assert not launches


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradients_into_given_tensors(monkeypatch, causal):
    """An engine's backward writes dq, dk and dv into given tensors (flashtron.keras.fused: the parts of one
    packed gradient) as it would into its own: every engine (the PyTorch path on the CPU, the portable kernels
    under the interpreter, the Hopper kernel on an sm_90 GPU, where the call must take it)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, seqlen, heads, head_dim = (2, 700, 3, 128) if device == "cuda" else (2, 37, 3, 16)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    qkv = torch.randn(batch, seqlen, 3, heads, head_dim, dtype=dtype, device=device)
    q, k, v = qkv.unbind(2)
    engine = ops._engine(q)
    args = (0.3, -1, 0 if causal else -1, 0.0, None, None, 0.0, None, False)
    out, lse = engine.forward(q, k, v, *args)
    dout = torch.randn_like(out)
    hopper = count_calls(monkeypatch, hopper_backward, "backward", lambda args: args[7].is_contiguous())
    own = engine.backward(dout, q, k, v, out, lse, *args)
    packed = torch.full_like(qkv, float("nan"))
    given = engine.backward(dout, q, k, v, out, lse, *args, grads=tuple(packed.unbind(2)))
    for part, a, b in zip(packed.unbind(2), own[:3], given[:3]):
        assert b.data_ptr() == part.data_ptr()
        torch.testing.assert_close(b, a, rtol=0.01, atol=0.01)  # dQ's float32 atomics: sums in any order
    if device == "cuda" and torch.cuda.get_device_capability() == (9, 0):
        assert hopper == [True, False]
