"""flash_attn_with_kvcache against the float64 oracle.

Each call appends new tokens to a cache filled with random data, so the test checks both halves:
the cache afterwards (new rows in place, rotated when asked, every other entry bit-identical) and
the output (flash-attn's 2x rule against the oracle run on each sequence's valid keys, with q and
the new keys rotated by the test's own rotary reference).
"""

import math

import pytest
import torch

from flashtron import flash_attn_with_kvcache
from flashtron.kernels import launch
from conftest import triton_kernel
from reference import assert_within_rule, attention_reference, max_error

HEADS, HEADS_KV, HEAD_DIM = 4, 2, 24


def rotate(x, cos, sin, positions, interleaved):
    """Reference rotary in float64: x (S, H, D) at positions (S,), first 2 * cos.shape[1] dims."""
    x = x.double()
    half = cos.shape[1]
    c, s = cos.double()[positions][:, None], sin.double()[positions][:, None]
    if interleaved:
        x1, x2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
        rotated = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    else:
        x1, x2 = x[..., :half], x[..., half:2 * half]
        rotated = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return torch.cat([rotated, x[..., 2 * half:]], dim=-1)


def to_pages(cache, page_size, generator, stale_nan=False):
    """cache (B, S, Hk, D) -> (pages, block_table) with pages in random order plus two spare pages (random
    data, or NaN with stale_nan, as are the last pages' rows past the cache's length)."""
    batch, seqlen = cache.shape[:2]
    per_seq = -(-seqlen // page_size)
    order = torch.randperm(batch * per_seq + 2, generator=generator)
    table = order[:batch * per_seq].reshape(batch, per_seq).to(torch.int32)
    filler = torch.full if stale_nan else (lambda shape, _: torch.randn(shape))
    pages = filler((batch * per_seq + 2, page_size, *cache.shape[2:]), float("nan")).to(cache.dtype)
    padded = torch.cat([cache, filler((batch, per_seq * page_size - seqlen, *cache.shape[2:]), float("nan"))
                        .to(cache.dtype)], 1)
    pages[table.flatten().long()] = padded.reshape(-1, page_size, *cache.shape[2:])
    return pages, table


def from_pages(pages, table, seqlen):
    return pages[table.long()].flatten(1, 2)[:, :seqlen]


def same(a, b):
    """Bit-identical, NaN (a stale cache entry) included."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def run_case(batch=3, seqlen_q=2, seqlen_new=2, cache_len=45, dtype=torch.float16, causal=True, paged=False,
             page_size=7, batch_idx=False, leftpad=False, rotary=None, num_splits=0, heads=HEADS, heads_kv=HEADS_KV,
             head_dim=HEAD_DIM, stale_nan=False, device="cpu", **variants):
    """Build everything on the CPU, call on `device`, check on the CPU.  stale_nan: every cache entry past a
    sequence's end (and every unused page row) holds NaN, which must not reach the output."""
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    cache_seqlens = torch.randint(0, cache_len - seqlen_new + 1, (batch,), generator=generator, dtype=torch.int32)
    cache_seqlens[0] = cache_len - seqlen_new  # one full row
    q = torch.randn(batch, seqlen_q, heads, head_dim).to(dtype)
    new = [torch.randn(batch, seqlen_new, heads_kv, head_dim).to(dtype) for _ in range(2)] if seqlen_new else [None] * 2
    rows = batch + 2 if batch_idx else batch
    caches = [torch.randn(rows, cache_len, heads_kv, head_dim).to(dtype) for _ in range(2)]
    extra = {}
    row_of = list(range(batch))
    if batch_idx:
        perm = torch.randperm(rows, generator=generator)[:batch].to(torch.int32)
        extra["cache_batch_idx"], row_of = perm, perm.tolist()
    pad = torch.zeros(batch, dtype=torch.int32)
    if leftpad:
        pad = (torch.rand(batch, generator=generator) * (cache_seqlens + 1).float()).to(torch.int32)
        extra["cache_leftpad"] = pad
    if rotary is not None:
        rotary_dim = rotary.get("rotary_dim", head_dim)
        angles = torch.rand(cache_len, rotary_dim // 2, generator=generator) * 2 * math.pi
        extra.update(rotary_cos=angles.cos().to(dtype), rotary_sin=angles.sin().to(dtype),
                     rotary_interleaved=rotary["interleaved"])
    if stale_nan:
        for cache in caches:
            for b in range(batch):
                cache[row_of[b], int(cache_seqlens[b]) + seqlen_new:] = float("nan")
            for row in set(range(rows)) - set(row_of):
                cache[row] = float("nan")
    before = [c.clone() for c in caches]
    if paged:
        pages = [to_pages(c, page_size, torch.Generator().manual_seed(7), stale_nan) for c in caches]
        table = pages[0][1]
        k_arg, v_arg = pages[0][0], pages[1][0]
        pages_before = [p[0].clone() for p in pages]
        extra["block_table"] = table
    else:
        k_arg, v_arg = caches
    on = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    k_dev, v_dev = on(k_arg), on(v_arg)
    out, lse = flash_attn_with_kvcache(on(q), k_dev, v_dev, *map(on, new), cache_seqlens=on(cache_seqlens),
                                       causal=causal, num_splits=num_splits, return_softmax_lse=True,
                                       **{name: on(t) for name, t in extra.items()},
                                       **{name: on(t) for name, t in variants.items()})
    out, lse = out.cpu(), lse.cpu()
    if device != "cpu":
        k_arg.copy_(k_dev)
        v_arg.copy_(v_dev)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (batch, heads, seqlen_q)
    after = [from_pages(k_arg, table, cache_len), from_pages(v_arg, table, cache_len)] if paged else caches

    for b in range(batch):
        start, end = int(cache_seqlens[b]), int(cache_seqlens[b]) + seqlen_new
        row = b if paged else row_of[b]
        positions = torch.arange(seqlen_new) + start  # cache rows, padding included (flash-attn's rule)
        for i, (cache_after, cache_before) in enumerate(zip(after, before)):
            expected_new = new[i][b] if new[i] is not None else cache_before[row, start:end]
            if i == 0 and rotary is not None and seqlen_new:
                expected_new = rotate(new[0][b], extra["rotary_cos"], extra["rotary_sin"], positions,
                                      rotary["interleaved"]).to(dtype)
                torch.testing.assert_close(cache_after[row, start:end], expected_new, atol=2e-3, rtol=2e-3)
            else:
                assert torch.equal(cache_after[row, start:end], expected_new)
            untouched = torch.ones(cache_len, dtype=torch.bool)
            untouched[start:end] = False
            assert same(cache_after[row, untouched], cache_before[row, untouched])
        keys = [t[row, int(pad[b]):end][None] for t in after]
        q_b = q[b:b + 1]
        if rotary is not None:
            # flash-attn drops a window side of at least the cache's rows before it picks q's positions.
            rows_per_seq = table.shape[1] * page_size if paged else cache_len
            windowed = causal or any(0 <= side < rows_per_seq for side in variants.get("window_size", (-1, -1)))
            q_positions = (torch.arange(seqlen_q) if windowed else torch.zeros(seqlen_q, dtype=torch.long)) + start
            q_b = rotate(q[b], extra["rotary_cos"], extra["rotary_sin"], q_positions,
                         rotary["interleaved"]).to(dtype)[None]
        seq_variants = dict(variants)
        if seq_variants.get("alibi_slopes") is not None and seq_variants["alibi_slopes"].dim() == 2:
            seq_variants["alibi_slopes"] = seq_variants["alibi_slopes"][b]
        truth, truth_lse = attention_reference(q_b, *keys, causal=causal, upcast=True,
                                               window=seq_variants.pop("window_size", (-1, -1)), **seq_variants)
        plain, _ = attention_reference(q_b, *keys, causal=causal, upcast=False,
                                       window=variants.get("window_size", (-1, -1)), **seq_variants)
        assert_within_rule("out", out[b:b + 1], truth, plain, 2, slack=2e-3 if rotary is not None else 1e-5)
        seen = torch.isfinite(truth_lse[0])
        assert torch.equal(torch.isinf(lse[b]), ~seen)
        assert max_error(lse[b][seen], truth_lse[0][seen]) < 1e-3
    if paged:
        # Spare pages and pages of other sequences than those written are untouched (checked above through
        # the tables); the two spare pages must be too.
        used = torch.zeros(k_arg.shape[0], dtype=torch.bool)
        used[table.flatten().long()] = True
        for now, then in zip((k_arg, v_arg), pages_before):
            assert same(now[~used], then[~used])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dense_cache(dtype, causal):
    run_case(dtype=dtype, causal=causal)


def test_outputs_carry_no_gradient():
    """Forward only, as flash-attn's: the new keys and values go into the cache in place, so nothing may promise them
    a gradient (a dense cache used to give q one and the new tokens silently none)."""
    q = torch.randn(2, 1, 4, 16, requires_grad=True)
    k_cache, v_cache = torch.randn(2, 8, 2, 16), torch.randn(2, 8, 2, 16)
    k_new = torch.randn(2, 1, 2, 16, requires_grad=True)
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, k_new * 2, cache_seqlens=3,
                                       return_softmax_lse=True)
    assert not out.requires_grad and not lse.requires_grad
    assert torch.equal(k_cache[:, 3], k_new[:, 0].detach())


@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_paged_cache_any_page_size(page_size):
    run_case(paged=True, page_size=page_size, seqlen_q=3, seqlen_new=3)


@pytest.mark.parametrize("page_size", [1, 3])
def test_paged_cache_crosses_block_table_chunks(page_size):
    # The kernel reads the block table in chunks (32 entries under the interpreter, 512 on GPUs): one
    # program over 230 keys crosses several, and with 3-row pages a chunk starts inside a page.
    run_case(paged=True, page_size=page_size, cache_len=230, seqlen_q=1, seqlen_new=1, num_splits=1)


@pytest.mark.parametrize("num_splits", [1, 3, 0])
def test_split_kv(num_splits):
    run_case(batch=1, seqlen_q=1, seqlen_new=1, cache_len=150, num_splits=num_splits, causal=False)


@triton_kernel
def test_split_merge_skips_splits_that_saw_nothing():
    """The merge of split-KV partials weighs splits by their lse; a split whose lse is +inf saw no key, and its
    output slot (NaN here) must not reach the output.  A row no split saw gets 0 and lse +inf."""
    device = "cpu" if launch.INTERPRET else "cuda"
    splits, batch, seqlen_q, heads, head_dim = 5, 2, 3, 4, 40
    out_accum = torch.randn(splits, batch, seqlen_q, heads, head_dim)
    lse_accum = torch.randn(splits, batch, heads, seqlen_q) * 3
    lse_accum[1:4] = float("inf")  # splits 1..3 saw nothing anywhere ...
    out_accum[1:4] = float("nan")
    lse_accum[:, 1, 2, 0] = float("inf")  # ... and no split saw batch 1, head 2, row 0
    out_accum[:, 1, 0, 2] = float("nan")
    out = torch.full((batch, seqlen_q, heads, head_dim), 7.0, dtype=torch.bfloat16, device=device)
    lse = torch.full((batch, heads, seqlen_q), 7.0, device=device)
    launch._combine_splits(out_accum.to(device), lse_accum.to(device), out, lse)
    finite = lse_accum.double().masked_fill(lse_accum == float("inf"), float("-inf"))
    expected_lse = torch.logsumexp(finite, dim=0)
    weights = torch.exp(finite - expected_lse).nan_to_num(0.0)  # (splits, batch, heads, seqlen_q)
    expected = (weights.permute(0, 1, 3, 2)[..., None] * out_accum.double().nan_to_num(0.0)).sum(0)
    expected_lse = expected_lse.masked_fill(expected_lse == float("-inf"), float("inf"))
    assert torch.equal(lse.cpu()[1, 2, 0], torch.tensor(float("inf")))
    assert torch.equal(out.cpu()[1, 0, 2], torch.zeros(head_dim, dtype=torch.bfloat16))
    torch.testing.assert_close(lse.cpu().double(), expected_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "halves"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_rotary(interleaved, causal):
    run_case(rotary=dict(interleaved=interleaved, rotary_dim=16), causal=causal, leftpad=causal)


@pytest.mark.parametrize("window", [(45, -1), (3, 45), (-1, 44)], ids=["left-spans", "right-spans", "right-short"])
def test_rotary_with_left_padding_and_windows(window):
    """flash-attn's positions: new tokens and queries rotate at their cache rows, left padding included, and a
    window side spanning the whole cache (45 rows) counts as none when q's positions are picked (all at
    cache_seqlens, as for full attention, only when neither side is left)."""
    run_case(rotary=dict(interleaved=False, rotary_dim=16), causal=False, leftpad=True,
             window_size=window)


def test_cache_batch_idx_leftpad_and_variants():
    run_case(batch_idx=True, leftpad=True, softcap=5.0, alibi_slopes=torch.rand(3, HEADS) * 0.3,
             window_size=(6, 0), causal=False)


def test_mqa_without_new_tokens():
    run_case(seqlen_new=0, heads_kv=1, seqlen_q=4)


def test_under_torch_compile_fullgraph():
    q = torch.randn(2, 1, HEADS, HEAD_DIM)
    k_cache, v_cache = torch.randn(2, 20, HEADS_KV, HEAD_DIM), torch.randn(2, 20, HEADS_KV, HEAD_DIM)
    k, v = torch.randn(2, 1, HEADS_KV, HEAD_DIM), torch.randn(2, 1, HEADS_KV, HEAD_DIM)
    seqlens = torch.tensor([3, 11], dtype=torch.int32)
    eager_caches = (k_cache.clone(), v_cache.clone())
    expected = flash_attn_with_kvcache(q, *eager_caches, k, v, cache_seqlens=seqlens, causal=True)
    step = torch.compile(lambda *args: flash_attn_with_kvcache(*args, cache_seqlens=seqlens, causal=True),
                         fullgraph=True, backend="aot_eager")
    out = step(q, k_cache, v_cache, k, v)
    torch.testing.assert_close(out, expected)
    assert torch.equal(k_cache, eager_caches[0]) and torch.equal(v_cache, eager_caches[1])


def test_bad_input_is_rejected():
    q = torch.randn(2, 1, HEADS, HEAD_DIM, dtype=torch.float16)
    cache = torch.randn(2, 10, HEADS_KV, HEAD_DIM, dtype=torch.float16)
    new = torch.randn(2, 3, HEADS_KV, HEAD_DIM, dtype=torch.float16)
    with pytest.raises(ValueError, match="does not fit"):
        flash_attn_with_kvcache(q, cache, cache.clone(), new, new, cache_seqlens=8)
    with pytest.raises(ValueError, match=r"cache_seqlens \+ 3 new tokens"):
        flash_attn_with_kvcache(q, cache, cache.clone(), new, new,
                                cache_seqlens=torch.tensor([1, 8], dtype=torch.int32))
    with pytest.raises(TypeError, match="k_cache has dtype"):
        flash_attn_with_kvcache(q, cache.float(), cache.float(), cache_seqlens=4)
    with pytest.raises(ValueError, match="head dims differ"):
        flash_attn_with_kvcache(q, cache[..., :8], cache[..., :8], cache_seqlens=4)
    with pytest.raises(ValueError, match="k and v must be given together"):
        flash_attn_with_kvcache(q, cache, cache.clone(), new, cache_seqlens=4)
    pages = torch.randn(4, 5, HEADS_KV, HEAD_DIM, dtype=torch.float16)
    with pytest.raises(ValueError, match="block_table entries must be page indices"):
        flash_attn_with_kvcache(q, pages, pages, cache_seqlens=3, block_table=torch.tensor([[0, 1], [2, 4]],
                                                                                          dtype=torch.int32))
    with pytest.raises(ValueError, match="num_splits"):
        flash_attn_with_kvcache(q, cache, cache.clone(), cache_seqlens=4, num_splits=-1)
    with pytest.raises(ValueError, match="cache_batch_idx entries"):
        flash_attn_with_kvcache(q, cache, cache.clone(), cache_seqlens=4,
                                cache_batch_idx=torch.tensor([0, 2], dtype=torch.int32))


@pytest.mark.parametrize("bad,error", [
    (dict(softcap=-1.0), ValueError), (dict(window_size=(-2, 0)), ValueError),
    (dict(softmax_scale=float("nan")), ValueError), (dict(causal="yes"), TypeError),
    (dict(alibi_slopes=torch.ones(3)), ValueError),
    (dict(rotary_cos=torch.ones(4, 4), rotary_sin=torch.zeros(4, 4)), ValueError),  # table too short for the positions
])
def test_bad_input_leaves_the_cache_alone(bad, error):
    """Every argument is checked before the new tokens are written: a call that raises changes no cache entry."""
    q = torch.randn(2, 1, HEADS, HEAD_DIM)
    cache = torch.randn(2, 10, HEADS_KV, HEAD_DIM)
    new = torch.randn(2, 3, HEADS_KV, HEAD_DIM)
    k_cache, v_cache = cache.clone(), cache.clone() + 1
    with pytest.raises(error):
        flash_attn_with_kvcache(q, k_cache, v_cache, new, new, cache_seqlens=4, **bad)
    assert torch.equal(k_cache, cache) and torch.equal(v_cache, cache + 1)


@pytest.mark.parametrize("with_new", [False, True])
@pytest.mark.parametrize("leftpad", [[-2, 0], [0, 6]])
def test_cache_leftpad_values_are_checked(with_new, leftpad):
    """cache_leftpad must lie in [0, cache_seqlens[b]], with or without new tokens."""
    q = torch.randn(2, 1, HEADS, HEAD_DIM)
    cache = torch.randn(2, 10, HEADS_KV, HEAD_DIM)
    new = (torch.randn(2, 1, HEADS_KV, HEAD_DIM), ) * 2 if with_new else (None, None)
    with pytest.raises(ValueError, match="cache_leftpad entries"):
        flash_attn_with_kvcache(q, cache, cache.clone(), *new, cache_seqlens=torch.tensor([3, 5], dtype=torch.int32),
                                cache_leftpad=torch.tensor(leftpad, dtype=torch.int32))


@triton_kernel
def test_kernel_clamps_cache_leftpad():
    """Where the host does not check cache_leftpad (a GPU without set_sequence_checks), the kernel clamps each
    row's padding to [0, its keys]: a negative one reads from the row's start, a too large one leaves no keys,
    and neither reads outside the cache.  Called below the host checks, with the cache's neighbours poisoned."""
    from flashtron import ops
    q = torch.randn(3, 1, HEADS, HEAD_DIM, dtype=torch.float16)
    storage = torch.full((5, 9, HEADS_KV, HEAD_DIM), float("nan"), dtype=torch.float16)
    storage[1:4] = torch.randn(3, 9, HEADS_KV, HEAD_DIM, dtype=torch.float16)
    cache = storage[1:4]
    seqused = torch.tensor([7, 7, 7], dtype=torch.int32)

    def attend(leftpad):
        return ops.attention(q, cache, cache, HEAD_DIM ** -0.5, -1, -1, 0.0, None, None, 0.0, None, False,
                             seqused_k=seqused, cache_leftpad=torch.tensor(leftpad, dtype=torch.int32), pack_gqa=True)

    out, lse = attend([-3, 2, 50])
    out_ok, lse_ok = attend([0, 2, 0])
    assert torch.equal(out[:2], out_ok[:2]) and torch.equal(lse[:2], lse_ok[:2])
    assert torch.equal(out[2], torch.zeros_like(out[2])) and bool((lse[2] == float("inf")).all())


def test_cache_argument_checks():
    q = torch.randn(2, 1, HEADS, HEAD_DIM)
    cache = torch.randn(2, 10, HEADS_KV, HEAD_DIM)
    strided = torch.randn(2, 10, HEADS_KV, 2 * HEAD_DIM)[..., ::2]
    new = torch.randn(2, 1, HEADS_KV, HEAD_DIM)
    with pytest.raises(ValueError, match="k_cache must have a unit stride"):  # the new tokens would go to a copy
        flash_attn_with_kvcache(q, strided, cache.clone(), new, new, cache_seqlens=4)
    with pytest.raises(ValueError, match="v_cache must have a unit stride"):
        flash_attn_with_kvcache(q, cache, strided, cache_seqlens=4)
    with pytest.raises(ValueError, match="k_cache has 24, v_cache has 8"):  # the messages name the cache arguments
        flash_attn_with_kvcache(q, cache, cache[..., :8].contiguous(), cache_seqlens=4)
    pages = torch.randn(4, 5, HEADS_KV, HEAD_DIM)
    with pytest.raises(ValueError, match="block_table must have shape"):
        flash_attn_with_kvcache(q, pages, pages, cache_seqlens=3, block_table=torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(TypeError, match="block_table must be a torch.Tensor"):
        flash_attn_with_kvcache(q, pages, pages, cache_seqlens=3, block_table=[[0, 1], [2, 3]])
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        flash_attn_with_kvcache(q, cache, cache.clone(), [[1.0]], new, cache_seqlens=4)
