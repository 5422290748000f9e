"""flashtron.cache_update: new keys and values land where flash_attn_with_kvcache puts them, and nowhere else.

The expected destination of every new token is worked out here with plain Python loops (position
cache_seqlens[b] + t, cache row cache_batch_idx[b] or b, or page block_table[b, p // page_size],
row p % page_size).  v and unrotated k must arrive bit for bit; rotated k is held to flash-attn's rule
against the float64 rotation of `test_rotary` at the position written, cache_seqlens[b] + t.
Caches start as random data, and every entry not written must stay bit-identical.  Runs on the CPU,
in plain mode and under TRITON_INTERPRET=1.
"""

import pytest
import torch
import torch._dynamo

from flashtron import cache_update
from flashtron.cache_update import update_kv_cache
from reference import assert_within_rule
from test_rotary import DTYPES, random_tables, rotary_reference


def expected_writes(batch, seqlen_new, cache_seqlens, cache_batch_idx=None, block_table=None, page_size=None):
    """[(b, t, cache index (row or page, position or row in page), rotary position)] for every new token."""
    writes = []
    for b in range(batch):
        for t in range(seqlen_new):
            p = int(cache_seqlens[b]) + t
            if block_table is None:
                row = b if cache_batch_idx is None else int(cache_batch_idx[b])
                writes.append((b, t, (row, p), p))
            else:
                writes.append((b, t, (int(block_table[b, p // page_size]), p % page_size), p))
    return writes


def check_update(k_cache, v_cache, k_before, v_before, k, v, writes, rotary=None):
    """rotary: (cos, sin, interleaved), or None when k is copied as is."""
    written = torch.zeros(k_cache.shape[:2], dtype=torch.bool)
    for _, _, index, _ in writes:
        written[index] = True
    assert written.sum() == len(writes), "the test's destinations overlap"
    # Entries not written are untouched, bit for bit.
    assert torch.equal(k_cache[~written], k_before[~written])
    assert torch.equal(v_cache[~written], v_before[~written])
    got_k = torch.stack([k_cache[index] for _, _, index, _ in writes])
    got_v = torch.stack([v_cache[index] for _, _, index, _ in writes])
    new_k = torch.stack([k[b, t] for b, t, _, _ in writes])
    new_v = torch.stack([v[b, t] for b, t, _, _ in writes])
    assert torch.equal(got_v, new_v)
    if rotary is None:
        assert torch.equal(got_k, new_k)
        return
    cos, sin, interleaved = rotary
    positions = torch.tensor([position for _, _, _, position in writes])
    truth = rotary_reference(new_k, cos, sin, positions, interleaved)
    plain = rotary_reference(new_k, cos, sin, positions, interleaved, upcast=False)
    assert_within_rule("k", got_k, truth, plain, 2.0, slack=1e-6)
    assert torch.equal(got_k[..., 2 * cos.shape[1]:], new_k[..., 2 * cos.shape[1]:])


def new_tokens(batch, seqlen_new, heads, head_dim, dtype, head_dim_v=None):
    k = torch.randn(batch, seqlen_new, heads, head_dim, dtype=dtype)
    v = torch.randn(batch, seqlen_new, heads, head_dim if head_dim_v is None else head_dim_v, dtype=dtype)
    return k, v


def run(k_cache, v_cache, k, v, cache_seqlens, **kwargs):
    """Update copies of the caches; returns (k_cache, v_cache) after the call."""
    k_after, v_after = k_cache.clone(), v_cache.clone()
    assert update_kv_cache(k_after, v_after, k, v, cache_seqlens, **kwargs) is None
    return k_after, v_after


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotary", [None, "interleaved", "halves"])
def test_dense(dtype, rotary):
    batch, seqlen_cache, heads, head_dim, seqlen_new = 3, 13, 2, 20, 3
    k_cache = torch.randn(batch, seqlen_cache, heads, head_dim, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    k, v = new_tokens(batch, seqlen_new, heads, head_dim, dtype)
    cache_seqlens = torch.tensor([0, 10, 4], dtype=torch.int32)
    kwargs, rotary_args = {}, None
    if rotary is not None:
        cos, sin = random_tables(seqlen_cache + 2, 6, dtype)  # rotary_dim 12 < head_dim 20
        kwargs = dict(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=rotary == "interleaved")
        rotary_args = (cos, sin, rotary == "interleaved")
    k_after, v_after = run(k_cache, v_cache, k, v, cache_seqlens, **kwargs)
    writes = expected_writes(batch, seqlen_new, cache_seqlens)
    check_update(k_after, v_after, k_cache, v_cache, k, v, writes, rotary_args)


def test_cache_batch_idx_and_other_head_dim_for_v():
    batch_cache, seqlen_cache, heads = 5, 9, 3
    k_cache = torch.randn(batch_cache, seqlen_cache, heads, 16, dtype=torch.float16)
    v_cache = torch.randn(batch_cache, seqlen_cache, heads, 8, dtype=torch.float16)
    k, v = new_tokens(2, 4, heads, 16, torch.float16, head_dim_v=8)
    cache_seqlens = torch.tensor([5, 1], dtype=torch.int32)
    cache_batch_idx = torch.tensor([4, 1], dtype=torch.int32)
    k_after, v_after = run(k_cache, v_cache, k, v, cache_seqlens, cache_batch_idx=cache_batch_idx)
    writes = expected_writes(2, 4, cache_seqlens, cache_batch_idx=cache_batch_idx)
    check_update(k_after, v_after, k_cache, v_cache, k, v, writes)


@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("rotary", [False, True])
def test_paged(page_size, rotary):
    torch.manual_seed(23 + page_size)
    batch, heads, head_dim, pages_per_seq = 3, 2, 12, 5
    capacity = pages_per_seq * page_size
    seqlen_new = min(4, capacity)
    num_blocks = batch * pages_per_seq + 2
    dtype = torch.bfloat16
    k_cache = torch.randn(num_blocks, page_size, heads, head_dim, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    k, v = new_tokens(batch, seqlen_new, heads, head_dim, dtype)
    block_table = torch.randperm(num_blocks)[:batch * pages_per_seq].reshape(batch, pages_per_seq).int()
    cache_seqlens = torch.tensor([0, capacity - seqlen_new, (capacity - seqlen_new) // 2], dtype=torch.int32)
    # Pages past the ones written may hold padding; only written pages must be valid.
    last_page = (int(cache_seqlens[0]) + seqlen_new - 1) // page_size
    block_table[0, last_page + 1:] = -1
    kwargs, rotary_args = {}, None
    if rotary:
        cos, sin = random_tables(capacity, 5, dtype)
        kwargs = dict(rotary_cos=cos, rotary_sin=sin, rotary_interleaved=False)
        rotary_args = (cos, sin, False)
    k_after, v_after = run(k_cache, v_cache, k, v, cache_seqlens, block_table=block_table, **kwargs)
    writes = expected_writes(batch, seqlen_new, cache_seqlens, block_table=block_table, page_size=page_size)
    check_update(k_after, v_after, k_cache, v_cache, k, v, writes, rotary_args)


def test_strided_caches_and_inputs():
    """The caches as views of one packed (B, S, 2, H, D) tensor, and k, v as views of a packed kv (as the MHA
    layer passes them): no copy, the writes land in the packed tensors."""
    kv_cache = torch.randn(2, 7, 2, 3, 8)
    before = kv_cache.clone()
    kv = torch.randn(2, 2, 2, 3, 8)
    cache_seqlens = torch.tensor([3, 5], dtype=torch.int32)
    cos, sin = random_tables(7, 2, torch.float32)
    update_kv_cache(kv_cache[:, :, 0], kv_cache[:, :, 1], kv[:, :, 0], kv[:, :, 1], cache_seqlens, rotary_cos=cos,
                    rotary_sin=sin)
    writes = expected_writes(2, 2, cache_seqlens)
    check_update(kv_cache[:, :, 0], kv_cache[:, :, 1], before[:, :, 0], before[:, :, 1], kv[:, :, 0], kv[:, :, 1],
                 writes, (cos, sin, True))


def test_out_of_range_writes_are_dropped(monkeypatch):
    """The op with its value checks off (as on CUDA without set_sequence_checks) drops writes that would leave the
    cache."""
    monkeypatch.setattr(cache_update, "host_checks_enabled", lambda t: False)
    k_cache = torch.randn(3, 2, 1, 4)  # paged: 3 blocks of 2 rows
    v_cache = torch.randn_like(k_cache)
    k, v = new_tokens(3, 3, 1, 4, torch.float32)
    block_table = torch.tensor([[0, -1], [2, 1], [7, 7]], dtype=torch.int32)  # pages -1 and 7 do not exist
    cache_seqlens = torch.tensor([1, 2, 0], dtype=torch.int32)  # row 1 runs past its 4 positions
    k_after, v_after = k_cache.clone(), v_cache.clone()
    torch.ops.flashtron.update_kv_cache(k_after, v_after, k, v, cache_seqlens, None, block_table, None, None, True)
    writes = [(0, 0, (0, 1), 1), (1, 0, (1, 0), 2), (1, 1, (1, 1), 3)]
    check_update(k_after, v_after, k_cache, v_cache, k, v, writes)


def test_compile_fullgraph():
    torch._dynamo.reset()
    k_cache = torch.randn(2, 8, 2, 8)
    v_cache = torch.randn_like(k_cache)
    k, v = new_tokens(2, 1, 2, 8, torch.float32)
    cos, sin = random_tables(8, 4, torch.float32)

    def step(k_cache, v_cache, k, v, cache_seqlens):
        update_kv_cache(k_cache, v_cache, k * 2.0, v, cache_seqlens, rotary_cos=cos, rotary_sin=sin)
        return k_cache.sum(dim=(2, 3)), v_cache[:, :, 0]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    for lengths in ([0, 5], [3, 7]):
        cache_seqlens = torch.tensor(lengths, dtype=torch.int32)
        eager_caches = k_cache.clone(), v_cache.clone()
        compiled_caches = k_cache.clone(), v_cache.clone()
        eager = step(*eager_caches, k, v, cache_seqlens)
        got = compiled(*compiled_caches, k, v, cache_seqlens)
        for a, b in zip((*eager, *eager_caches), (*got, *compiled_caches)):
            torch.testing.assert_close(b, a, atol=0, rtol=0)
        assert not torch.equal(compiled_caches[0], k_cache)
    torch._dynamo.reset()


def test_opcheck():
    k_cache = torch.randn(4, 3, 2, 8)
    v_cache = torch.randn_like(k_cache)
    k, v = new_tokens(2, 2, 2, 8, torch.float32)
    block_table = torch.tensor([[3, 0], [1, 2]], dtype=torch.int32)
    cos, sin = random_tables(6, 3, torch.float32)
    cache_seqlens = torch.tensor([2, 4], dtype=torch.int32)
    result = torch.library.opcheck(torch.ops.flashtron.update_kv_cache.default,
                                   (k_cache, v_cache, k, v, cache_seqlens, None, block_table, cos, sin, False))
    assert all(value == "SUCCESS" for value in result.values()), result


def _error_cases():
    k_cache = torch.randn(3, 6, 2, 8)
    v_cache = torch.randn_like(k_cache)
    k, v = torch.randn(2, 2, 2, 8), torch.randn(2, 2, 2, 8)
    seqlens = torch.tensor([1, 2], dtype=torch.int32)
    table = torch.tensor([[0, 1], [2, 0]], dtype=torch.int32)
    cos, sin = torch.randn(6, 3), torch.randn(6, 3)

    def call(**overrides):
        args = dict(k_cache=k_cache.clone(), v_cache=v_cache.clone(), k=k, v=v, cache_seqlens=seqlens)
        args.update(overrides)
        return lambda: update_kv_cache(**args)

    return [
        (TypeError, "k has dtype", call(k=k.half())),
        (TypeError, "v_cache has dtype", call(v_cache=v_cache.half())),
        (ValueError, "k has 3 heads", call(k=torch.randn(2, 2, 3, 8), v=torch.randn(2, 2, 3, 8))),
        (ValueError, "k has head dim 4", call(k=torch.randn(2, 2, 2, 4))),
        (ValueError, "k and v must agree", call(v=torch.randn(2, 3, 2, 8))),
        (ValueError, "v_cache", call(v_cache=torch.randn(3, 5, 2, 8))),
        (ValueError, "k_cache must have 4 dimensions", call(k_cache=k_cache[0])),
        (TypeError, "cache_seqlens must be int32", call(cache_seqlens=seqlens.long())),
        (ValueError, "cache_seqlens must have shape", call(cache_seqlens=seqlens[:1])),
        (TypeError, "cache_batch_idx must be int32", call(cache_batch_idx=torch.tensor([0, 1]))),
        (ValueError, "cache_batch_idx must have shape", call(cache_batch_idx=seqlens[:1])),
        (ValueError, "cache_batch_idx and block_table", call(cache_batch_idx=seqlens, block_table=table)),
        (TypeError, "block_table must be int32", call(block_table=table.long())),
        (ValueError, "block_table must have shape", call(block_table=table[:1])),
        (ValueError, "fewer than the batch", call(k_cache=k_cache[:1].clone(), v_cache=v_cache[:1].clone())),
        (ValueError, "seqlen_new", call(k=torch.randn(2, 7, 2, 8), v=torch.randn(2, 7, 2, 8))),
        (ValueError, "rotary_cos and rotary_sin", call(rotary_cos=cos)),
        (ValueError, "rotary_dim", call(rotary_cos=torch.randn(6, 5), rotary_sin=torch.randn(6, 5))),
        (TypeError, "rotary_cos has dtype", call(rotary_cos=cos.half(), rotary_sin=sin.half())),
        (ValueError, "same shape", call(rotary_cos=cos, rotary_sin=sin[:, :2])),
        (ValueError, "positions", call(rotary_cos=cos[:5], rotary_sin=sin[:5])),
        (TypeError, "rotary_interleaved", call(rotary_interleaved=None)),
        # Value checks (CPU tensors: always on).
        (ValueError, "cache_seqlens must hold", call(cache_seqlens=torch.tensor([1, 5], dtype=torch.int32))),
        (ValueError, "cache_seqlens must hold", call(cache_seqlens=torch.tensor([-1, 0], dtype=torch.int32))),
        (ValueError, "cache_batch_idx must hold", call(cache_batch_idx=torch.tensor([0, 3], dtype=torch.int32))),
        (ValueError, r"block_table\[1\] points outside",
         call(block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
              cache_seqlens=torch.tensor([1, 6], dtype=torch.int32))),
    ]


@pytest.mark.parametrize("case", range(len(_error_cases())))
def test_errors(case):
    error, message, call = _error_cases()[case]
    with pytest.raises(error, match=message):
        call()


def test_error_leaves_caches_untouched():
    k_cache = torch.randn(2, 4, 1, 8)
    before = k_cache.clone()
    with pytest.raises(ValueError):
        update_kv_cache(k_cache, k_cache.clone(), torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8),
                        torch.tensor([0, 3], dtype=torch.int32))
    assert torch.equal(k_cache, before)


@pytest.mark.gpu
def test_cuda_graph_capture():
    """No host synchronisation: the update replays from a captured CUDA graph with new lengths."""
    device = "cuda"
    k_cache = torch.randn(2, 64, 4, 64, device=device, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    k = torch.randn(2, 1, 4, 64, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    cos, sin = (t.to(device) for t in random_tables(64, 16, torch.bfloat16))
    cache_seqlens = torch.tensor([3, 9], dtype=torch.int32, device=device)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()

    def step():
        update_kv_cache(k_cache, v_cache, k, v, cache_seqlens, rotary_cos=cos, rotary_sin=sin)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compiles the kernel outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    cache_seqlens.copy_(torch.tensor([20, 40], dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    update_kv_cache(k_expected, v_expected, k, v, cache_seqlens.clone(), rotary_cos=cos, rotary_sin=sin)
    for b, position in ((0, 20), (1, 40)):
        assert torch.equal(k_cache[b, position], k_expected[b, position])
        assert torch.equal(v_cache[b, position], v[b, 0])
