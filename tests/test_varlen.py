"""flash_attn_varlen_func and its packed forms against the float64 oracle, sequence by sequence.

A batch of sequences of different lengths (zero included) is packed along the token axis; each
sequence's output and gradients must match the oracle run on that sequence alone, with every
variant applied per sequence (causal and windows aligned bottom-right within each).
"""

import pytest
import torch

from flashtron import (flash_attn_func, flash_attn_varlen_func, flash_attn_varlen_kvpacked_func,
                       flash_attn_varlen_qkvpacked_func)
from reference import assert_within_rule, max_error
from test_flash_attn import DTYPES, _differentiable, reference_and_grads, sink_gradient_slack


def cu_seqlens_of(lengths, device="cpu"):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)


def packed_inputs(lengths_q, lengths_k, num_heads, num_heads_kv, head_dim, dtype, device="cpu"):
    make = lambda total, h: torch.randn(total, h, head_dim, dtype=dtype, device=device, requires_grad=True)
    return make(sum(lengths_q), num_heads), make(sum(lengths_k), num_heads_kv), make(sum(lengths_k), num_heads_kv)


def check_varlen_against_oracle(lengths_q, lengths_k, num_heads, num_heads_kv, head_dim, dtype, causal,
                                max_slack=0, seqused=None, device="cpu", **variants):
    """Run one packed call and hold every sequence to flash-attn's rule (2x out, 3x gradients)."""
    q, k, v = packed_inputs(lengths_q, lengths_k, num_heads, num_heads_kv, head_dim, dtype, device)
    cu_q, cu_k = cu_seqlens_of(lengths_q, device), cu_seqlens_of(lengths_k, device)
    used_q, used_k = (lengths_q, lengths_k) if seqused is None else seqused
    extra = {} if seqused is None else dict(seqused_q=torch.tensor(used_q, dtype=torch.int32, device=device),
                                            seqused_k=torch.tensor(used_k, dtype=torch.int32, device=device))
    max_q, max_k = max(lengths_q, default=0) + max_slack, max(lengths_k, default=0) + max_slack
    out, lse, s_dmask = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal,
                                               return_attn_probs=True, **extra, **variants)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (num_heads, q.shape[0]) and lse.dtype == torch.float32
    dropout_p = variants.get("dropout_p", 0.0)
    if dropout_p > 0:
        assert s_dmask.shape == (len(lengths_q), num_heads, max_q, max_k)
    dout = torch.randn_like(out)
    sinks = variants.get("sinks")
    grads = torch.autograd.grad(out, _differentiable(q, k, v, variants), dout)

    # The oracle, one sequence at a time (a batch of one each), assembled in the packed layout.
    truth = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in
             (("out", out), ("dq", q), ("dk", k), ("dv", v))}
    plain = {name: torch.zeros_like(t) for name, t in (("out", out), ("dq", q), ("dk", k), ("dv", v))}
    truth_lse = torch.full_like(lse, float("inf"))
    dsinks_truth = dsinks_plain = 0.0
    for b, (start_q, start_k) in enumerate(zip(cu_q[:-1].tolist(), cu_k[:-1].tolist())):
        rows_q, rows_k = slice(start_q, start_q + used_q[b]), slice(start_k, start_k + used_k[b])
        seq_variants = dict(variants)
        if variants.get("alibi_slopes") is not None and variants["alibi_slopes"].dim() == 2:
            seq_variants["alibi_slopes"] = variants["alibi_slopes"][b]
        if dropout_p > 0:
            seq_variants["dropout_keep"] = (s_dmask[b, :, :used_q[b], :used_k[b]] >= 0)[None].double()
        seq = [t[rows][None].detach() for t, rows in ((q, rows_q), (k, rows_k), (v, rows_k))]
        for store, upcast in ((truth, True), (plain, False)):
            o, l, g = reference_and_grads(*seq, dout[rows_q][None], causal, upcast, **seq_variants)
            store["out"][rows_q] = o[0].to(store["out"].dtype)
            for name, rows, grad in (("dq", rows_q, g[0]), ("dk", rows_k, g[1]), ("dv", rows_k, g[2])):
                store[name][rows] = grad[0].to(store[name].dtype)
            if sinks is not None and sinks.requires_grad:
                if upcast:
                    dsinks_truth = dsinks_truth + g[3]
                else:
                    dsinks_plain = dsinks_plain + g[3]
            if upcast:
                truth_lse[:, rows_q] = l[0].float()
    assert_within_rule("out", out, truth["out"], plain["out"], 2)
    for name, ours in zip(("dq", "dk", "dv"), grads):
        assert_within_rule(name, ours, truth[name], plain[name], 3)
    if sinks is not None and sinks.requires_grad:
        assert_within_rule("dsinks", grads[3], dsinks_truth, dsinks_plain, 3,
                           slack=sink_gradient_slack("dsinks", dtype))
    sees_nothing = torch.isinf(truth_lse)
    assert torch.equal(torch.isinf(lse), sees_nothing), "lse must be +inf exactly where a row sees no key"
    assert max_error(lse[~sees_nothing], truth_lse[~sees_nothing]) < 1e-4
    return q, k, v, out, grads


# Lengths per sequence, queries and keys: zero-length sequences, single tokens, Sq < Sk and Sq > Sk.
BATCHES = [
    ([17, 0, 33, 1, 64], [17, 0, 33, 1, 64]),
    ([5, 40, 0, 71], [29, 3, 12, 71]),
    ([1, 1, 1, 1, 1, 1], [90, 0, 7, 33, 64, 1]),
]


@pytest.mark.parametrize("lengths", BATCHES, ids=["self", "cross", "decode"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_matches_oracle_per_sequence(lengths, causal, dtype):
    check_varlen_against_oracle(*lengths, 4, 2, 40, dtype, causal)


@pytest.mark.parametrize("head_dim", [8, 59, 128])
def test_head_dims_and_mqa(head_dim):
    check_varlen_against_oracle([23, 48], [31, 48], 3, 1, head_dim, torch.float16, True)


def test_variants_apply_per_sequence():
    torch.manual_seed(torch.seed() % 2**31)
    check_varlen_against_oracle([19, 0, 50, 37], [26, 5, 50, 30], 4, 2, 32, torch.float32, True,
                                window_size=(9, -1), softcap=3.0, alibi_slopes=torch.rand(4, 4),
                                sinks=torch.randn(4, requires_grad=True))
    check_varlen_against_oracle([33, 12], [40, 12], 2, 2, 24, torch.bfloat16, False, window_size=(6, 4))


def test_dropout_per_sequence():
    check_varlen_against_oracle([21, 45, 0], [30, 45, 8], 2, 1, 16, torch.float32, True, dropout_p=0.2)


def test_max_seqlen_larger_than_the_longest_sequence():
    check_varlen_against_oracle([12, 30], [20, 30], 2, 2, 16, torch.float16, True, max_slack=41)


def test_seqused_limits_each_sequence():
    # Sequences of 20 and 35 tokens of which 13 / 0 queries and 16 / 35 keys take part.
    q, k, v, out, (dq, dk, dv) = check_varlen_against_oracle(
        [20, 35], [24, 35], 2, 1, 16, torch.float32, True, seqused=([13, 0], [16, 35]))
    unused_q = torch.cat([torch.arange(13, 20), torch.arange(20, 55)])
    unused_k = torch.arange(16, 24)
    assert (out[unused_q] == 0).all() and (dq[unused_q] == 0).all()
    assert (dk[unused_k] == 0).all() and (dv[unused_k] == 0).all()


def test_equal_lengths_match_the_dense_call():
    batch, seqlen, heads, head_dim = 3, 37, 2, 32
    q, k, v = (torch.randn(batch, seqlen, heads, head_dim) for _ in range(3))
    cu = cu_seqlens_of([seqlen] * batch)
    dense = flash_attn_func(q, k, v, causal=True)
    packed = flash_attn_varlen_func(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu, cu, seqlen, seqlen,
                                    causal=True)
    torch.testing.assert_close(packed.reshape(dense.shape), dense, atol=1e-5, rtol=1e-5)


def test_packed_forms_match_the_unpacked_call():
    lengths = [11, 0, 26]
    cu = cu_seqlens_of(lengths)
    qkv = torch.randn(sum(lengths), 3, 2, 16, requires_grad=True)
    out = flash_attn_varlen_qkvpacked_func(qkv, cu, 26, causal=True)
    expected = flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, 26, 26, causal=True)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    out.sum().backward()
    assert qkv.grad.shape == qkv.shape and torch.isfinite(qkv.grad).all()
    kv = qkv[:, 1:].detach().requires_grad_()
    out = flash_attn_varlen_kvpacked_func(qkv[:, 0].detach(), kv, cu, cu, 26, 26)
    expected = flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, 26, 26)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def _valid_call():
    q, k, v = packed_inputs([3, 5], [4, 6], 2, 1, 8, torch.float32)
    return dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_of([3, 5]), cu_seqlens_k=cu_seqlens_of([4, 6]),
                max_seqlen_q=5, max_seqlen_k=6)


@pytest.mark.parametrize("change, error, words", [
    (dict(cu_seqlens_q=torch.tensor([0, 3, 8])), TypeError, "cu_seqlens_q must be int32"),
    (dict(cu_seqlens_k=torch.tensor([0, 10], dtype=torch.int32)), ValueError, "cu_seqlens_k must have shape (3,)"),
    (dict(cu_seqlens_q=torch.tensor([0, 6, 5], dtype=torch.int32)), ValueError, "non-decreasing"),
    (dict(cu_seqlens_k=torch.tensor([0, 4, 9], dtype=torch.int32)), ValueError, "must end at the number of tokens"),
    (dict(cu_seqlens_q=torch.tensor([1, 3, 8], dtype=torch.int32)), ValueError, "must start at 0"),
    (dict(max_seqlen_q=4), ValueError, "max_seqlen_q (4) is smaller"),
    (dict(max_seqlen_k=6.0), TypeError, "max_seqlen_k must be an int"),
    (dict(max_seqlen_k=-1), ValueError, "max_seqlen_k must be >= 0"),
    (dict(seqused_k=torch.tensor([4, 7], dtype=torch.int32)), ValueError, "seqused_k"),
    (dict(seqused_q=torch.tensor([1], dtype=torch.int32)), ValueError, "seqused_q must have shape (2,)"),
    (dict(q=torch.randn(1, 8, 2, 8)), ValueError, "q must have 3 dimensions"),
    (dict(alibi_slopes=torch.rand(3, 2)), ValueError, "alibi_slopes must have shape (2,) or (2, 2)"),
])
def test_bad_input_names_the_argument(change, error, words):
    call = dict(_valid_call(), **change)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        flash_attn_varlen_func(**call)


def test_compiles_without_graph_break():
    call = _valid_call()
    compiled = torch.compile(flash_attn_varlen_func, backend="aot_eager", fullgraph=True)
    out = compiled(**call, causal=True)
    torch.testing.assert_close(out, flash_attn_varlen_func(**call, causal=True), atol=0, rtol=0)
    out.sum().backward()
    assert torch.isfinite(call["q"].grad).all()


def paged_copy(k, lengths, page_size, spare_pages=3):
    """k (total_k, Hk, D) packed by `lengths` -> (pages (num_pages, page_size, Hk, D), block_table): every
    sequence's keys in pages scattered at random, unused rows and spare pages filled with NaN."""
    pages_per_seq = [-(-n // page_size) for n in lengths]
    num_pages = sum(pages_per_seq) + spare_pages
    pages = torch.full((num_pages, page_size, *k.shape[1:]), float("nan"), dtype=k.dtype)
    order = torch.randperm(num_pages)
    table = torch.zeros(len(lengths), max(pages_per_seq + [1]), dtype=torch.int32)
    start, used = 0, 0
    for b, n in enumerate(lengths):
        for p in range(pages_per_seq[b]):
            page = int(order[used])
            used += 1
            table[b, p] = page
            rows = min(page_size, n - p * page_size)
            pages[page, :rows] = k[start + p * page_size:start + p * page_size + rows]
        table[b, pages_per_seq[b]:] = int(order[-1])  # entries past a sequence's pages: any valid page
        start += n
    return pages, table


@pytest.mark.parametrize("page_size", [1, 3, 16])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_paged_keys_match_packed_keys(page_size, causal):
    lengths_q, lengths_k = [5, 0, 17, 1], [9, 4, 33, 12]
    q, k, v = packed_inputs(lengths_q, lengths_k, 4, 2, 24, torch.float16)
    cu_q, cu_k = cu_seqlens_of(lengths_q), cu_seqlens_of(lengths_k)
    args = (cu_q, cu_k, max(lengths_q), max(lengths_k))
    variants = dict(causal=causal, softcap=4.0, alibi_slopes=torch.rand(4) * 0.2) if causal else {}
    expected, expected_lse, _ = flash_attn_varlen_func(q, k, v, *args, return_attn_probs=True, **variants)
    # k and v share one page table, as in a KV cache.
    kv_pages, table = paged_copy(torch.cat([k, v], dim=-1).detach(), lengths_k, page_size)
    k_pages, v_pages = kv_pages.split(24, dim=-1)
    out, lse, _ = flash_attn_varlen_func(q.detach(), k_pages, v_pages, *args, return_attn_probs=True,
                                         block_table=table, **variants)
    torch.testing.assert_close(out, expected.detach(), atol=2e-3, rtol=0)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=0)
    assert torch.isfinite(out).all()


def test_paged_keys_errors():
    q, k, v = packed_inputs([3], [5], 2, 2, 16, torch.float32)
    cu_q, cu_k = cu_seqlens_of([3]), cu_seqlens_of([5])
    pages = k.detach().reshape(5, 1, 2, 16)
    table = torch.arange(5, dtype=torch.int32)[None]
    with pytest.raises(ValueError, match="block_table entries must be page indices"):
        flash_attn_varlen_func(q, pages, pages, cu_q, cu_k, 3, 5, block_table=table + 1)
    with pytest.raises(TypeError, match="block_table must be int32"):
        flash_attn_varlen_func(q, pages, pages, cu_q, cu_k, 3, 5, block_table=table.long())
    with pytest.raises(ValueError, match="fewer than"):
        flash_attn_varlen_func(q, pages, pages, cu_q, cu_k, 3, 6, block_table=table)
    with pytest.raises(ValueError, match="must have 4 dimensions"):
        flash_attn_varlen_func(q, k, v, cu_q, cu_k, 3, 5, block_table=table)
    out = flash_attn_varlen_func(q, pages, pages, cu_q, cu_k, 3, 5, block_table=table)
    with pytest.raises(NotImplementedError, match="no backward"):
        out.sum().backward()
