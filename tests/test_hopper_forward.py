"""The Hopper forward (kernels/hopper_forward.py): which calls it takes, and that it keeps the contract.

The kernel is Gluon, which has no interpreter: its numerical tests need an sm_90 GPU (marked `gpu`).
Every GPU test checks that the call really went through the Hopper kernel, so a silent fallback to
the portable kernel cannot pass for it.
"""

import pytest
import torch

from flashtron import flash_attn_func, flash_attn_qkvpacked_func, flash_attn_varlen_func
from flashtron.kernels import hardware, hopper_forward
from conftest import KERNEL_DEVICE, triton_kernel
from test_flash_attn import check_against_oracle, random_inputs
from test_varlen import cu_seqlens_of


def _reason(q, k, v, causal=False, window=(-1, -1), dense=True, **variants):
    window_right = 0 if causal else window[1]
    return hopper_forward.unsupported_reason(q, k, v, q.shape[-1] ** -0.5, window[0], window_right,
                                             variants.get("softcap", 0.0), variants.get("alibi_slopes"),
                                             variants.get("sinks"), variants.get("dropout_p", 0.0), dense)


def test_cpu_tensors_take_the_portable_kernel():
    q, k, v = random_inputs((1, 9, 9, 2, 2, 128), torch.bfloat16)
    assert _reason(q, k, v) is not None


def test_head_dims_and_their_sequence_lengths(monkeypatch):
    monkeypatch.setattr(hardware, "capability", lambda device: (9, 0))
    monkeypatch.setattr(hopper_forward, "_GLUON", True)
    reason = lambda sq, sk, head_dim: _reason(torch.empty(1, sq, 2, head_dim, dtype=torch.bfloat16),  # noqa: E731
                                              *(torch.empty(1, sk, 2, head_dim, dtype=torch.bfloat16),) * 2)
    def varlen_reason(longest, head_dim):
        packed = torch.empty(1, 5000, 2, head_dim, dtype=torch.bfloat16)
        return hopper_forward.unsupported_reason(packed, packed, packed, 0.1, -1, -1, 0.0, None, None, 0.0, True,
                                                 (longest, 1))
    for head_dim, (limit, varlen_limit) in hopper_forward.MIN_SEQLEN.items():
        assert reason(max(limit, 1), 1, head_dim) is None and reason(1, max(limit, 1), head_dim) is None
        if limit > 1:
            assert "short" in reason(limit - 1, limit - 1, head_dim)
        assert varlen_reason(max(varlen_limit, 1), head_dim) is None
        if varlen_limit > 1:
            assert "short" in varlen_reason(varlen_limit - 1, head_dim)
    assert "head dim" in reason(4096, 4096, 96) and "head dim" in reason(4096, 4096, 512)
    assert "dtype" in _reason(*(torch.empty(1, 4096, 2, 128),) * 3)  # float32
    fp8 = torch.float8_e4m3fn
    for head_dim in (32, 64, 128, 256):
        taken = _reason(*(torch.empty(1, 100, 2, head_dim, dtype=fp8),) * 3) is None
        assert taken == (head_dim in hopper_forward.FP8_HEAD_DIMS)
    packed = torch.empty(1, 5000, 2, 128, dtype=fp8)
    assert hopper_forward.unsupported_reason(packed, packed, packed, 0.1, -1, -1, 0.0, None, None, 0.0, True,
                                             (1, 1)) is None


@pytest.mark.skipif(not hopper_forward._GLUON, reason="needs Gluon")
@triton_kernel
@pytest.mark.parametrize("seqlen", [1, 16, 37, 130])
def test_fp8_values_copied_keys_innermost(seqlen):
    """FP8's P V reads v keys-innermost, (B, Hk * D, Sk rounded up to 16); the rounding must be zeros (a NaN there
    would reach the output through P's zeros)."""
    v = (torch.randn(2, seqlen, 3, 64, device=KERNEL_DEVICE) * 3).to(torch.float8_e4m3fn)
    vt, desc, starts, _ = hopper_forward.values_transposed(v, 128)
    padded = -(-seqlen // 16) * 16
    assert vt.shape == (2, 3 * 64, padded) and vt.is_contiguous() and starts is None
    assert torch.equal(vt.view(2, 3, 64, padded)[..., :seqlen].float(), v.permute(0, 2, 3, 1).float())
    assert torch.equal(vt[..., seqlen:].float().cpu(), torch.zeros(2, 3 * 64, padded - seqlen))
    assert list(desc.block_shape) == [1, 64, 128]


@pytest.mark.skipif(not hopper_forward._GLUON, reason="needs Gluon")
@triton_kernel
def test_fp8_packed_values_start_each_sequence_at_16_keys():
    """Packed sequences: a TMA box's innermost start must be 16-byte aligned, so each sequence's keys start at a
    multiple of 16 in the copy, at the returned offsets, with zeros between."""
    lengths = [17, 0, 32, 1, 5]
    v = (torch.randn(1, sum(lengths), 2, 64) * 3).to(torch.float8_e4m3fn)
    vt, _, starts, copy = hopper_forward.values_transposed(v.to(KERNEL_DEVICE), 128,
                                                           cu_seqlens_of(lengths, KERNEL_DEVICE))
    assert copy is None  # a packed batch's copy is not prepared: its columns come from the device each call
    vt, starts = vt.cpu(), starts.cpu()
    assert starts.tolist() == [0, 32, 32, 64, 80, 96] and starts.dtype == torch.int32
    expected = torch.zeros(2 * 64, vt.shape[2])
    for b, n in enumerate(lengths):
        first = sum(lengths[:b])
        expected[:, starts[b]:starts[b] + n] = v[0, first:first + n].reshape(n, 2 * 64).t().float()
    assert torch.equal(vt[0].float(), expected) and vt.shape[2] % 16 == 0


def test_box_needs_heads_side_by_side():
    t = torch.randn(2, 37, 4, 128, dtype=torch.bfloat16)
    assert hopper_forward._box(t) == ([2, 37, 512], [37 * 512, 512, 1])
    # k of a packed qkv: rows 3 * H * D apart.
    k = torch.randn(2, 37, 3, 4, 128, dtype=torch.bfloat16)[:, :, 1]
    assert hopper_forward._box(k) == ([2, 37, 512], [37 * 3 * 512, 3 * 512, 1])
    assert hopper_forward._box(torch.randn(2, 4, 37, 128).transpose(1, 2)) is None
    assert hopper_forward._box(torch.randn(2, 37, 4, 130)[..., :128]) is None
    # Batch entries sharing their keys (expand) cannot be boxes.
    assert hopper_forward._box(torch.randn(1, 37, 4, 128).expand(3, 37, 4, 128)) is None
    # Rows 513 elements (1026 bytes) apart: not 16-byte aligned.
    unaligned = torch.randn(2, 37, 4 * 128 + 1, dtype=torch.bfloat16)[..., :512].view(2, 37, 4, 128)
    assert hopper_forward._box(unaligned) is None


def test_tiles_across_heads_for_causal_and_long_windows():
    """The forward's tile order: across heads for causal calls and windows with both edges once a head has
    more than a quarter of the programs' count of blocks (16k tokens: 128 blocks on 132 SMs); one head
    after another for shorter sequences, variable-length batches and calls whose tiles are equal."""
    across = hopper_forward.across_heads
    assert across(128, 1024, 0, None, 132) and across(64, 256, 256, None, 132) and across(128, -1, 0, None, 132)
    assert not across(32, 1024, 0, None, 132) and not across(32, -1, 0, None, 132)
    assert not across(128, 1024, 0, (None, None, 16384, 16384), 132)
    assert not across(128, -1, -1, None, 132) and not across(128, 1024, -1, None, 132)
    assert not across(128, -1, 5, None, 132)  # a right edge past the diagonal: not measured, one head after another


def test_three_consumers_for_dense_head_dim_64_without_a_mask_or_long_and_causal():
    count = hopper_forward.consumer_count
    long = hopper_forward.CAUSAL_THREE_FROM
    assert count(64, -1, -1, None, 1536, 1) == 3 and count(64, -1, 0, None, long, long) == 3
    assert count(64, -1, 0, None, 1, long) == 2  # one row: a 192-row tile is 1.5x a 128-row one
    assert count(64, -1, 0, None, long - 128, long) == 3  # the longer side decides the causal length...
    assert count(64, -1, 0, None, long - 1, long - 1) == 2
    assert count(128, -1, -1, None, long, long) == 2
    assert count(64, 100, 0, None, long, long) == 2 and count(64, 100, -1, None, long, long) == 2
    assert count(64, -1, 200, None, long, long) == 2
    assert count(64, -1, -1, (None, None, 4096, 4096), long, long) == 2


@pytest.mark.parametrize("seqlen_q, consumers", [(1024, 2), (1152, 3), (1536, 3), (2048, 3), (2100, 3), (3072, 3),
                                                  (4096, 3), (16384, 3), (100, 2), (640, 2), (700, 3)])
def test_three_consumers_only_where_their_taller_tiles_pad_little(seqlen_q, consumers):
    """...and Sq's padding: rows launched in 192-row tiles within THREE_MAX_PADDING of those in 128-row tiles."""
    assert hopper_forward.consumer_count(64, -1, -1, None, seqlen_q, 4) == consumers


def test_mask_first_at_head_dim_64_and_long_windows_at_128():
    """mask_first: the run-time mask in a branch of its own at D = 64, and at D = 128 for windows whose left edge
    spans MASK_FIRST_WINDOW keys or more; two softmax bodies otherwise."""
    long = hopper_forward.MASK_FIRST_WINDOW
    assert all(hopper_forward.mask_first(64, left) for left in (-1, 0, 100, long))
    assert hopper_forward.mask_first(128, long) and hopper_forward.mask_first(128, 4 * long)
    assert not any(hopper_forward.mask_first(128, left) for left in (-1, 0, long - 1))
    assert not any(hopper_forward.mask_first(256, left) for left in (-1, long))


def test_key_blocks_from_the_last_below_head_dim_256():
    """_key_order: the key blocks from the last under every mask but at D = 256; the loop without a masked softmax
    only without a mask (no window edge on either side): with three consumers, in variable-length batches, and from
    PLAIN_LOOP_FROM keys."""
    order = hopper_forward._key_order
    long = hopper_forward.PLAIN_LOOP_FROM
    assert order(128, -1, -1, None, long - 1, 2) == dict(FROM_LAST=True, PLAIN_LOOP=False)
    assert order(128, -1, -1, None, long, 2) == dict(FROM_LAST=True, PLAIN_LOOP=True)
    assert order(64, -1, -1, (None, None, 1000, 1000), 1000, 2) == dict(FROM_LAST=True, PLAIN_LOOP=True)
    assert order(64, -1, -1, None, 2048, 3) == dict(FROM_LAST=True, PLAIN_LOOP=True)
    for window, consumers in (((-1, 0), 2), ((-1, 0), 3), ((-1, 5), 2), ((1024, 0), 2), ((100, -1), 3),
                              ((0, 0), 2)):
        assert order(64, *window, None, 4 * long, consumers) == dict(FROM_LAST=True, PLAIN_LOOP=False)
        assert order(128, *window, (None, None, 1000, 1000), 1000, 2) == dict(FROM_LAST=True, PLAIN_LOOP=False)
    for window in ((-1, 0), (-1, -1), (1024, 0), (100, -1)):
        assert order(256, *window, None, 4 * long, 2) == dict(FROM_LAST=False, PLAIN_LOOP=False)


on_hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                               reason="needs an sm_90 GPU")


def count_calls(monkeypatch, module, name, record):
    """Wraps module.name; each call appends record(args) to the returned list."""
    calls = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(record(args))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


@pytest.fixture
def launches(monkeypatch):
    """Counts the Hopper kernel's launches; the tests' short sequences take it at every head dim."""
    monkeypatch.setattr(hopper_forward, "MIN_SEQLEN", dict.fromkeys(hopper_forward.MIN_SEQLEN, (0, 0)))
    return count_calls(monkeypatch, hopper_forward, "forward", lambda args: args[0].shape)


# (batch, seqlen_q, seqlen_k, num_heads, num_heads_kv, head_dim): tails of every size, Sq < Sk and
# Sq > Sk (causal rows that see nothing), GQA and MQA, one key block and many.
HOPPER_SHAPES = [
    (2, 1000, 3000, 4, 2, 128),
    (1, 4097, 1023, 2, 2, 128),
    (3, 511, 511, 6, 3, 128),
    (2, 2048, 2049, 4, 1, 128),
    (4, 113, 257, 8, 8, 128),
    (1, 3000, 17, 2, 2, 128),
    (2, 1, 700, 4, 4, 128),
    (1, 8192, 8192, 2, 1, 128),
    (2, 1000, 3000, 4, 2, 64),
    (1, 3000, 17, 2, 2, 64),
    (2, 1, 700, 4, 4, 64),
]
over_shapes = pytest.mark.parametrize("shape", HOPPER_SHAPES, ids=lambda s: "x".join(map(str, s)))
# Head dims whose backward keeps the portable kernels (hopper_backward.MIN_SEQLEN): forward tests only.
# The last: ~4 tiles per persistent program, each waiting for the previous tile's output to leave Q's tiles.
FORWARD_ONLY_SHAPES = [(2, 1000, 3000, 4, 2, 256), (3, 511, 511, 6, 3, 256), (1, 3000, 17, 2, 2, 256),
                       (2, 1, 700, 4, 4, 256), (4, 2000, 2000, 8, 2, 256)]
over_forward_shapes = pytest.mark.parametrize("shape", HOPPER_SHAPES + FORWARD_ONLY_SHAPES,
                                              ids=lambda s: "x".join(map(str, s)))

# Sliding windows (left, right), aligned bottom-right: one side or both, narrower than a block, a band of
# one key, and issue 3's benchmark window.  With HOPPER_SHAPES' Sq != Sk some rows see nothing.
WINDOWS = [(100, 0), (300, 50), (0, 0), (129, -1), (-1, 200), (1024, 0)]
over_windows = pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}_{w[1]}")


def check_on_hopper(launches, shape, dtype, causal, **variants):
    """The oracle check of one call on fresh inputs, which must have run the kernel `launches` counts."""
    check_against_oracle(*random_inputs(shape, dtype, "cuda"), causal, **variants)
    assert launches, "the call did not take the Hopper kernel"
    torch.cuda.empty_cache()


@pytest.mark.gpu
@on_hopper
@over_forward_shapes
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_matches_oracle(shape, causal, dtype, launches):
    check_on_hopper(launches, shape, dtype, causal)


@pytest.mark.gpu
@on_hopper
@over_forward_shapes
@over_windows
def test_windows_match_oracle(shape, window, launches):
    check_on_hopper(launches, shape, torch.bfloat16, False, window_size=window)


@pytest.mark.gpu
@on_hopper
@over_shapes
def test_loop_without_masked_softmax_matches_oracle(shape, launches, monkeypatch):
    """PLAIN_LOOP at every length (no mask): the first block visited, the last, holds the sequence's end."""
    monkeypatch.setattr(hopper_forward, "PLAIN_LOOP_FROM", 0)
    check_on_hopper(launches, shape, torch.bfloat16, False)


@pytest.mark.gpu
@on_hopper
@over_shapes
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (300, 50), (600, 0)], ids=lambda w: f"{w[0]}_{w[1]}")
def test_other_mask_branch_matches_oracle(shape, window, launches, monkeypatch):
    """Each head dim with the other form of the run-time mask (hopper_forward.mask_first flipped): both forms stay
    right whichever one a head dim ships with."""
    shipped = hopper_forward.mask_first
    monkeypatch.setattr(hopper_forward, "mask_first", lambda head_dim, window_left: not shipped(head_dim, window_left))
    check_on_hopper(launches, shape, torch.bfloat16, False, window_size=window)


@pytest.mark.gpu
@on_hopper
# Under causal, the first shape's tiles are taken one head after another (12 query blocks per head), the
# second's heaviest-first across heads (40 blocks per head, more than a quarter of the programs).
@pytest.mark.parametrize("shape", [(3, 1500, 1700, 8, 2, 128), (1, 5000, 4000, 2, 1, 128)],
                         ids=lambda s: "x".join(map(str, s)))
def test_equals_portable_kernel(shape, launches, monkeypatch):
    q, k, v = random_inputs(shape, torch.bfloat16, "cuda")
    for window in ((-1, -1), (-1, 0), (700, 0)):
        out, lse, _ = flash_attn_func(q, k, v, window_size=window, return_attn_probs=True)
        monkeypatch.setattr(hopper_forward, "_DISABLED", True)
        count = len(launches)
        ref_out, ref_lse, _ = flash_attn_func(q, k, v, window_size=window, return_attn_probs=True)
        assert len(launches) == count
        monkeypatch.setattr(hopper_forward, "_DISABLED", False)
        # The same arithmetic, the key blocks visited in another order (from the last, see
        # hopper_forward._key_order): the outputs' float32 values differ in their last bits, so a bfloat16 output
        # may round one step apart: one unit in its last place, at most 2^-7 of its magnitude.
        torch.testing.assert_close(out, ref_out, atol=2e-3, rtol=2 ** -7)
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
    assert len(launches) == 3


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0)] + WINDOWS, ids=lambda w: f"{w[0]}_{w[1]}")
def test_three_consumers_equal_two(window, launches, monkeypatch):
    """Tiles of three consumers (192 rows) visit each row's visible key blocks in the same order as tiles of two (a
    block a row does not see changes nothing, wherever it comes), so the outputs are equal bit for bit.  Forced here
    under every mask and for a variable-length batch, though only dense D = 64 calls without a mask, or causal ones
    from CAUSAL_THREE_FROM tokens, take three."""
    q, k, v = (t.detach() for t in random_inputs((2, 1000, 1100, 4, 2, 64), torch.bfloat16, "cuda"))
    lengths = [1, 200, 1000, 63]
    cu = cu_seqlens_of(lengths, "cuda")
    packed = [t.reshape(-1, *t.shape[2:])[:sum(lengths)] for t in (q, k, v)]
    results = []
    for consumers in (2, 3):
        monkeypatch.setattr(hopper_forward, "consumer_count", lambda *args, n=consumers: n)
        out, lse, _ = flash_attn_func(q, k, v, window_size=window, return_attn_probs=True)
        out_varlen = flash_attn_varlen_func(*packed, cu, cu, max(lengths), max(lengths), window_size=window)
        results.append((out, lse, out_varlen))
    assert len(launches) == 4
    for a, b in zip(*results):
        assert torch.equal(a, b)


# FP8 at D = 128: keys not a multiple of 16 (the rounded copy of v), GQA and MQA, Sq > Sk, one key block and many.
FP8_SHAPES = [(2, 1000, 3000, 4, 2, 128), (1, 3000, 17, 2, 2, 128), (3, 511, 700, 6, 1, 128), (2, 1, 700, 4, 4, 128),
              (4, 2000, 2000, 8, 2, 128)]


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("shape", FP8_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (300, 0), (100, 50)], ids=lambda w: f"{w[0]}_{w[1]}")
def test_fp8_matches_oracle(shape, window, launches):
    from test_fp8 import check, fp8_inputs
    check(*fp8_inputs(*shape, device="cuda"), window=window)
    assert launches, "the call did not take the Hopper kernel"


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (9, 0)], ids=lambda w: f"{w[0]}_{w[1]}")
def test_fp8_negative_and_zero_descales(window, launches):
    """q's and k's descales fold into the row max only where their product is positive; a negative one flips the
    scores, a zero one makes them all 0, and masked scores stay -inf whatever the sign."""
    from test_fp8 import check, fp8_inputs
    q, k, v, descales = fp8_inputs(2, 370, 450, 4, 2, 128, device="cuda")
    descales[0][0, 1] = -descales[0][0, 1]
    descales[1][1, 0] = 0.0
    descales[2][1, 1] = -descales[2][1, 1]
    assert torch.isfinite(check(q, k, v, descales, window=window)).all()
    assert launches


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("lengths", [[500, 0, 1023, 17], [17, 32, 8, 100, 1]], ids=["long", "short"])
def test_fp8_varlen(lengths, launches):
    """Sequences starting at keys that are not multiples of 16 (v's copy aligns them): each equal bit for bit to the
    dense call on that sequence alone, itself held to the oracle."""
    from test_fp8 import check, fp8_inputs
    q, k, v, descales = fp8_inputs(len(lengths), max(lengths), max(lengths), 4, 2, 128, device="cuda")
    cu = cu_seqlens_of(lengths, "cuda")
    pack = lambda t: torch.cat([t[b, :n] for b, n in enumerate(lengths)])  # noqa: E731
    out = flash_attn_varlen_func(pack(q), pack(k), pack(v), cu, cu, max(lengths), max(lengths), causal=True,
                                 q_descale=descales[0], k_descale=descales[1], v_descale=descales[2])
    assert launches and launches[0][:2] == (1, sum(lengths))
    for b, n in enumerate(lengths):
        if n:
            expected = check(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], [s[b:b + 1] for s in descales],
                             causal=True)
            assert torch.equal(out[int(cu[b]):int(cu[b]) + n], expected[0])


@pytest.mark.gpu
@on_hopper
def test_packed_qkv_and_custom_scale(launches):
    qkv = torch.randn(2, 999, 3, 4, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = flash_attn_qkvpacked_func(qkv, causal=True, softmax_scale=0.05)
    assert launches
    q, k, v = (qkv[:, :, i].detach().clone().requires_grad_() for i in range(3))
    check_against_oracle(q, k, v, True, softmax_scale=0.05)
    ref = flash_attn_func(q, k, v, causal=True, softmax_scale=0.05)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@pytest.mark.gpu
@on_hopper
def test_unsupported_calls_fall_back(launches):
    q, k, v = random_inputs((1, 300, 300, 2, 2, 128), torch.bfloat16, "cuda")
    check_against_oracle(q, k, v, True, alibi_slopes=torch.rand(2, device="cuda"))
    check_against_oracle(q, k, v, False, softcap=5.0)
    q96, k96, v96 = random_inputs((1, 300, 300, 2, 2, 96), torch.bfloat16, "cuda")
    check_against_oracle(q96, k96, v96, False)
    strided = [t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert _reason(*strided) is not None
    flash_attn_func(*strided)
    assert not launches
