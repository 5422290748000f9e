"""The Hopper paged decoding kernel (kernels/hopper_decode.py): which calls it takes, and that it keeps the
contract of flash_attn_with_kvcache.

Gluon has no interpreter, so the numerical tests need an sm_90 GPU (marked `gpu`).  They go through
test_kvcache's run_case (the cache update, the float64 oracle on each sequence's valid keys, flash-attn's
2x rule), with caches whose entries past every sequence's end are NaN, and each checks that the output
really came from the Hopper kernel.
"""

import pytest
import torch

from flashtron.kernels import hardware, hopper_decode, launch
from test_hopper_forward import count_calls, on_hopper
from test_kvcache import from_pages, run_case


def _reason(page_size=16, head_dim=128, heads=32, heads_kv=8, seqlen_q=1, paged=True, **variants):
    q = torch.empty(2, seqlen_q, heads, head_dim, dtype=torch.bfloat16)
    k = torch.empty(10, page_size, heads_kv, head_dim, dtype=torch.bfloat16)
    args = dict(softmax_scale=0.1, window_left=-1, window_right=-1, softcap=0.0, alibi_slopes=None, sinks=None,
                block_table=torch.zeros(2, 3, dtype=torch.int32) if paged else None)
    args.update(variants)
    return hopper_decode.unsupported_reason(q, k, k, **args)


def test_scope(monkeypatch):
    assert "sm_90" in _reason()  # CPU tensors
    monkeypatch.setattr(hardware, "capability", lambda device: (9, 0))
    monkeypatch.setattr(torch.Tensor, "device", torch.device("cuda", 0))
    assert _reason() is None
    assert _reason(page_size=256, head_dim=64) is None and _reason(page_size=8, head_dim=256) is None
    assert "contiguous" in _reason(paged=False)
    assert "page size" in _reason(page_size=12) and "page size" in _reason(page_size=4)
    assert "head dim" in _reason(head_dim=96)
    assert "rows" in _reason(seqlen_q=17)  # 4 heads x 17 queries > 64 rows
    assert _reason(window_right=0) is None  # causal
    assert "window" in _reason(window_left=100, window_right=0)
    assert "softcap" in _reason(softcap=5.0)
    assert "non-positive" in _reason(softmax_scale=0.0)
    assert "empty" in _reason(block_table=torch.zeros(2, 0, dtype=torch.int32))


def test_split_counts(monkeypatch):
    """The counts launch.forward asks for on this kernel's path: 64-key tiles, one program per SM."""
    monkeypatch.setattr(launch, "_sm_count", lambda device: 132)
    splits = lambda requested, items, keys: launch._num_splits(  # noqa: E731
        requested, items, -(-keys // hopper_decode.BLOCK_N), torch.device("cuda"), 1)
    assert splits(1, 8, 1 << 17) == 1
    assert splits(7, 8, 1 << 17) == 7
    assert splits(7, 8, 100) == 2  # no more splits than key tiles
    assert splits(0, 8, 1 << 17) == 16  # one program per SM
    assert splits(0, 512, 4096) == 1
    assert splits(0, 8, 1024) == 4  # >= 4 tiles per split


def test_launch_shapes():
    """Head dims up to 128 size each program so that two share an SM: 2 x 256 threads within the 64K registers,
    and 2 rings plus the ~8 KB of layout scratch (106620 bytes in all at head dim 128, compiled for sm_90) within
    its 228 KB of shared memory.  A grid of two programs per SM or more gets a shallower ring; head dim 256 keeps
    one program per SM."""
    for head_dim in (64, 128):
        for programs in (8, 264, 5000):
            stages, registers = hopper_decode._launch_shape(head_dim, 2, programs, 132)
            ring = stages * 2 * hopper_decode.BLOCK_N * head_dim * 2
            assert stages >= 2 and 2 * 256 * registers <= 65536
            assert 2 * (ring + 9 * 1024) <= 228 * 1024
    assert hopper_decode._launch_shape(128, 2, 128, 132)[0] == 3
    assert hopper_decode._launch_shape(128, 2, 264, 132)[0] == 2
    assert hopper_decode._launch_shape(256, 2, 8, 132) == (2, None)


@pytest.fixture
def launches(monkeypatch):
    return count_calls(monkeypatch, hopper_decode, "decode", lambda args: args[0].shape)


CASES = [
    dict(page_size=16, head_dim=128, heads=32, heads_kv=8, dtype=torch.bfloat16, seqlen_q=1, seqlen_new=1,
         causal=True, num_splits=0, cache_len=4133),
    dict(page_size=8, head_dim=128, heads=16, heads_kv=2, dtype=torch.float16, seqlen_q=2, seqlen_new=2, causal=True,
         num_splits=1, cache_len=700),
    dict(page_size=64, head_dim=64, heads=16, heads_kv=2, dtype=torch.float16, seqlen_q=3, seqlen_new=0,
         causal=False, num_splits=3, cache_len=1000),
    dict(page_size=256, head_dim=256, heads=8, heads_kv=2, dtype=torch.bfloat16, seqlen_q=1, seqlen_new=0,
         causal=False, num_splits=1, cache_len=130),
    dict(page_size=32, head_dim=128, heads=64, heads_kv=1, dtype=torch.bfloat16, seqlen_q=1, seqlen_new=1,
         causal=False, num_splits=0, cache_len=2000),
    dict(page_size=16, head_dim=128, heads=32, heads_kv=8, dtype=torch.bfloat16, seqlen_q=1, seqlen_new=1,
         causal=True, num_splits=0, cache_len=333, batch=40),
    # 40 forced splits: a merge over more than 32 partials, most of which saw no key of the shorter sequences.
    dict(page_size=16, head_dim=256, heads=8, heads_kv=2, dtype=torch.bfloat16, seqlen_q=1, seqlen_new=0,
         causal=False, num_splits=40, cache_len=3000),
]


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("case", CASES, ids=lambda c: "p{page_size}-d{head_dim}-g{}-q{seqlen_q}-s{num_splits}".format(
    c["heads"] // c["heads_kv"], **c))
@pytest.mark.parametrize("stale_nan", [False, True], ids=["random", "nan"])
def test_matches_oracle(case, stale_nan, launches):
    case = dict(case)
    run_case(device="cuda", paged=True, batch=case.pop("batch", 3), stale_nan=stale_nan, **case)
    assert launches, "the output did not come from the Hopper kernel"


@pytest.mark.gpu
@on_hopper
def test_other_calls_keep_the_portable_kernel(launches):
    run_case(device="cuda", paged=True, page_size=12, head_dim=128, heads=8, heads_kv=2, cache_len=300)
    run_case(device="cuda", paged=False, head_dim=128, heads=8, heads_kv=2, cache_len=300)
    run_case(device="cuda", paged=True, page_size=16, head_dim=128, heads=8, heads_kv=2, cache_len=300,
             softcap=3.0)
    assert not launches


@pytest.mark.gpu
@on_hopper
def test_split_calls_repeat_across_streams_and_graphs(launches):
    """Split decoding calls one after another (eager, on a second stream, replayed from a CUDA graph with new
    lengths, among them a sequence of one key that most splits do not see) give the same bits as a fresh call,
    and the first ones agree with the portable kernel on the same cache laid out contiguously."""
    from flashtron import flash_attn_with_kvcache
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    batch, heads, heads_kv, head_dim, page_size, pages_per_seq = 3, 32, 8, 128, 16, 40
    q = torch.randn(batch, 1, heads, head_dim, generator=generator).to("cuda", torch.bfloat16)
    k_cache, v_cache = (torch.randn(batch * pages_per_seq, page_size, heads_kv, head_dim, generator=generator)
                        .to("cuda", torch.bfloat16) for _ in range(2))
    table = torch.randperm(batch * pages_per_seq, generator=generator).reshape(batch, -1).to("cuda", torch.int32)
    seqlens = torch.tensor([640, 1, 333], dtype=torch.int32, device="cuda")

    def step(splits):
        return flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, block_table=table,
                                       num_splits=splits, return_softmax_lse=True)

    def identical(outputs, others):
        return all(torch.equal(a, b) for a, b in zip(outputs, others))

    expected = {splits: [t.clone() for t in step(splits)] for splits in (7, 3)}
    contiguous = [from_pages(c, table, pages_per_seq * page_size) for c in (k_cache, v_cache)]
    reference = flash_attn_with_kvcache(q, *contiguous, cache_seqlens=seqlens, num_splits=1).float()
    for splits in (7, 3):
        assert (expected[splits][0].float() - reference).abs().max().item() < 2e-2
    for splits in (7, 3, 7):
        assert identical(step(splits), expected[splits])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        side = [[t.clone() for t in step(splits)] for splits in (3, 7)]
    torch.cuda.current_stream().wait_stream(stream)
    assert identical(side[0], expected[3]) and identical(side[1], expected[7])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = [step(7), step(3)]
    for lengths in ([5, 640, 64], [640, 1, 333]):
        seqlens.copy_(torch.tensor(lengths, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()
        for outputs, splits in zip(captured, (7, 3)):
            assert identical(outputs, step(splits)), (lengths, splits)
    assert launches
