"""The GPU suite: the oracle checks at GPU sizes, plus what only a GPU can show.

Marked `gpu`: skipped where CUDA is absent (CI).  Run on the GPU machine with
`python -m pytest -m gpu tests/test_gpu.py`; the `sanitizer` subset is small
enough to run under compute-sanitizer (memcheck and racecheck).
"""

import pytest
import torch
import torch.nn.functional as F

from flashtron import flash_attn_func
from reference import attention_reference, max_error
from test_flash_attn import DTYPES, check_against_oracle, random_inputs
from test_varlen import check_varlen_against_oracle

pytestmark = pytest.mark.gpu

GPU_SHAPES = [
    (1, 8192, 8192, 2, 1, 128),
    (2, 1000, 3000, 4, 2, 64),
    (1, 4097, 1023, 2, 2, 256),
    (3, 511, 511, 6, 3, 96),
    (2, 2048, 2049, 4, 1, 59),
    (4, 113, 257, 8, 8, 111),
    (1, 3000, 17, 2, 2, 40),
]


@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_matches_oracle_gpu(shape, causal, dtype):
    check_against_oracle(*random_inputs(shape, dtype, "cuda"), causal)
    torch.cuda.empty_cache()


GPU_VARIANT_CASES = [
    ((2, 2048, 2048, 8, 2, 128), True, dict(window_size=(256, -1))),
    ((1, 3000, 1500, 4, 4, 64), False, dict(window_size=(100, 50))),
    ((1, 1024, 1024, 4, 1, 96), True, dict(softcap=20.0, alibi_slopes="per_batch")),
    ((2, 777, 1333, 6, 3, 256), False, dict(window_size=(64, 64), softcap=10.0)),
    ((2, 1500, 1000, 8, 2, 128), True, dict(sinks="random")),
    ((2, 1024, 1536, 8, 4, 64), True, dict(dropout_p=0.15)),
    ((1, 700, 700, 4, 4, 128), False, dict(dropout_p=0.4, window_size=(128, 128))),
]


def _materialise(variants, shape, device="cuda"):
    if variants.get("alibi_slopes") == "per_batch":
        variants = dict(variants, alibi_slopes=torch.rand(shape[0], shape[3], device=device))
    if variants.get("sinks") == "random":
        variants = dict(variants, sinks=torch.randn(shape[3], device=device, requires_grad=True))
    return variants


@pytest.mark.parametrize("case", GPU_VARIANT_CASES, ids=lambda c: "x".join(map(str, c[0])) + str(sorted(c[2])))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_variants_match_oracle_gpu(case, dtype):
    shape, causal, variants = case
    check_against_oracle(*random_inputs(shape, dtype, "cuda"), causal, **_materialise(variants, shape))
    torch.cuda.empty_cache()


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("side", [2 ** 31 - 1, 2 ** 31])
def test_huge_window_sides_bound_nothing_gpu(head_dim, side):
    """The Hopper kernels (fp16, D = 64 and 128) got a huge left side's forward wrong (int32 wrap) and did not compile
    past 2**31 (test_variants.py has the CPU and interpreter form)."""
    q, k, v = random_inputs((1, 300, 300, 2, 2, head_dim), torch.float16, "cuda")
    for window, causal in (((side, -1), False), ((-1, side), False), ((side, side), True)):
        out = flash_attn_func(q, k, v, causal=causal, window_size=window)
        torch.testing.assert_close(out, flash_attn_func(q, k, v, causal=causal), atol=0, rtol=0)


SANITIZER_SHAPES = [(1, 37, 53, 4, 2, 40), (2, 130, 65, 2, 1, 128), (1, 64, 64, 2, 2, 256), (1, 17, 17, 1, 1, 1)]


@pytest.mark.sanitizer
@pytest.mark.parametrize("shape", SANITIZER_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_small_shapes_for_sanitizer(shape, causal, dtype):
    check_against_oracle(*random_inputs(shape, dtype, "cuda"), causal)


@pytest.mark.sanitizer
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bfloat16", "float32"])
def test_small_variants_for_sanitizer(dtype):
    shape = (2, 70, 45, 4, 2, 40)
    check_against_oracle(*random_inputs(shape, dtype, "cuda"), True, window_size=(9, -1), softcap=3.0,
                         **_materialise(dict(alibi_slopes="per_batch", sinks="random"), shape))


@pytest.mark.sanitizer
def test_small_dropout_for_sanitizer():
    check_against_oracle(*random_inputs((2, 70, 45, 4, 2, 40), torch.bfloat16, "cuda"), True, dropout_p=0.2)


def test_dropped_fraction_gpu():
    q, k, v = (torch.randn(4, 1024, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    _, _, s_dmask = flash_attn_func(q, k, v, dropout_p=0.23, return_attn_probs=True)
    assert abs((s_dmask < 0).float().mean().item() - 0.23) < 0.01


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_repeat_is_bit_identical(causal):
    q, k, v = random_inputs((2, 1531, 1531, 8, 2, 128), torch.bfloat16, "cuda")
    dout = torch.randn_like(q)
    first = flash_attn_func(q, k, v, causal=causal)
    # The default backward may sum dQ with float32 atomics (Hopper); deterministic=True may not.
    first_grads = torch.autograd.grad(flash_attn_func(q, k, v, causal=causal, deterministic=True), (q, k, v), dout)
    for _ in range(100):
        assert torch.equal(flash_attn_func(q, k, v, causal=causal), first)
    for _ in range(50):
        out = flash_attn_func(q, k, v, causal=causal, deterministic=True)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), dout), first_grads):
            assert torch.equal(a, b)


def test_batch_times_heads_beyond_grid_limit():
    # 1100 * 64 = 70400 > 65535 programs along one axis.
    check_against_oracle(*random_inputs((1100, 8, 8, 64, 16, 16), torch.float16, "cuda"), True)


def _sdpa_float32(q, k, v):
    """Non-causal SDPA in float32 on (B, S, H, D) tensors, for slices of a huge problem."""
    out = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v)))
    return out.transpose(1, 2)


def test_tensors_beyond_2_to_31_elements_batch_offsets():
    # batch * stride_b crosses 2**31: offsets must be 64-bit.
    batch = 2**31 // (128 * 128) + 1
    q, k, v = (torch.randn(batch, 128, 1, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert q.numel() > 2**31
    out = flash_attn_func(q, k, v)
    for b in (0, batch // 2, batch - 1):
        expected = _sdpa_float32(q[b:b + 1], k[b:b + 1], v[b:b + 1])
        assert max_error(out[b:b + 1], expected) < 2e-2
    del q, k, v, out
    torch.cuda.empty_cache()


def test_tensors_beyond_2_to_31_elements_sequence_offsets():
    # position * stride_s crosses 2**31 inside one batch entry; causal keeps it affordable.
    seqlen, heads, head_dim = 2**31 // (32 * 256) + 64, 32, 256
    q, k, v = (torch.randn(1, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    assert q.numel() > 2**31
    out = flash_attn_func(q, k, v, causal=True)
    torch.cuda.synchronize()  # a fault in our kernel surfaces here, not in the reference below
    # The last 64 rows see every key but the last few: compare them one head at a time in
    # float32 matmuls (torch's own kernels are not what is under test at this size).
    rows, keys = torch.arange(seqlen - 64, seqlen, device="cuda"), torch.arange(seqlen, device="cuda")
    keep = keys[None, :] <= rows[:, None]
    for head in (0, heads - 1):
        scores = (q[0, -64:, head].float() @ k[0, :, head].float().T) * head_dim ** -0.5
        probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        expected = probs @ v[0, :, head].float()
        assert max_error(out[0, -64:, head], expected) < 2e-2
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad[:, -256:]).all() and t.grad[:, -256:].abs().sum() > 0
    del q, k, v, out
    torch.cuda.empty_cache()


def test_compile_inductor_fullgraph():
    q, k, v = random_inputs((2, 300, 300, 4, 2, 64), torch.bfloat16, "cuda")
    fn = lambda q, k, v: flash_attn_func(q, k, v, causal=True)
    compiled = torch.compile(fn, fullgraph=True)
    dout = torch.randn_like(q)
    eager_out = fn(q, k, v)
    eager_grads = torch.autograd.grad(eager_out, (q, k, v), dout)
    out = compiled(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    # The same kernels on the same inputs: bit-identical through the compiled graph.
    assert torch.equal(out, eager_out)
    for a, b in zip(grads, eager_grads):
        assert torch.equal(a, b)


def test_float32_is_full_precision_unless_tf32_allowed():
    q, k, v = random_inputs((1, 512, 512, 4, 4, 64), torch.float32, "cuda")
    truth, _ = attention_reference(q, k, v)
    ieee = flash_attn_func(q, k, v)
    assert max_error(ieee, truth) < 1e-5
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        tf32 = flash_attn_func(q, k, v)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert 1e-5 < max_error(tf32, truth) < 1e-2


def test_peak_memory_is_linear_in_seqlen():
    seqlen, heads, head_dim = 16384, 16, 128
    q, k, v = random_inputs((1, seqlen, seqlen, heads, heads, head_dim), torch.bfloat16, "cuda")
    dout = torch.randn_like(q)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    out = flash_attn_func(q, k, v, causal=True)
    torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - baseline
    tensor_bytes = q.numel() * q.element_size()
    # out, dq, dk, dv, lse, delta and (Hopper) a float32 dQ buffer: a handful of input-sized tensors,
    # nowhere near the 8 GiB a (heads, seqlen, seqlen) bf16 score matrix would take.
    assert extra < 8 * tensor_bytes, f"extra memory {extra / 2**20:.0f} MiB"


GPU_VARLEN_CASES = [
    # (lengths_q, lengths_k, H, Hk, D, causal, variants)
    ([1000, 0, 3000, 17, 2048], [1000, 0, 3000, 17, 2048], 8, 2, 128, True, {}),
    ([513, 129, 4095], [2000, 700, 4095], 4, 4, 64, False, {}),
    ([1, 1, 1, 1], [4097, 300, 0, 8192], 8, 1, 128, True, {}),
    ([2048, 777], [2048, 900], 4, 2, 96, True, dict(window_size=(256, -1), softcap=15.0, sinks="random")),
    ([1500, 600], [1500, 600], 4, 4, 256, False, dict(alibi_slopes="per_batch", dropout_p=0.1)),
]


@pytest.mark.parametrize("case", GPU_VARLEN_CASES, ids=lambda c: f"{len(c[0])}seqs-D{c[4]}" + str(sorted(c[6])))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_varlen_matches_oracle_gpu(case, dtype):
    lengths_q, lengths_k, heads, heads_kv, head_dim, causal, variants = case
    variants = _materialise(variants, (len(lengths_q), 0, 0, heads))
    check_varlen_against_oracle(lengths_q, lengths_k, heads, heads_kv, head_dim, dtype, causal, device="cuda",
                                **variants)
    torch.cuda.empty_cache()


def test_varlen_seqused_gpu():
    check_varlen_against_oracle([300, 1200, 64], [500, 1200, 64], 4, 2, 128, torch.bfloat16, True, device="cuda",
                                seqused=([100, 1200, 0], [450, 7, 64]), max_slack=100)


@pytest.mark.sanitizer
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_small_varlen_for_sanitizer(causal):
    check_varlen_against_oracle([37, 0, 70, 1], [53, 9, 70, 0], 4, 2, 40, torch.bfloat16, causal, device="cuda",
                                window_size=(20, -1), sinks=torch.randn(4, device="cuda", requires_grad=True))
    check_varlen_against_oracle([20, 33], [31, 33], 2, 1, 64, torch.float16, causal, device="cuda",
                                seqused=([11, 33], [31, 2]), dropout_p=0.2)


def test_varlen_capturable_in_cuda_graph():
    # No host synchronisation in the call: it records into a CUDA graph and replays.
    from flashtron import flash_attn_varlen_func
    cu = torch.tensor([0, 300, 300, 1300], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(1300, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    expected = flash_attn_varlen_func(q, k, v, cu, cu, 1000, 1000, causal=True)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        flash_attn_varlen_func(q, k, v, cu, cu, 1000, 1000, causal=True)  # warm-up compile outside capture
        with torch.cuda.graph(graph):
            out = flash_attn_varlen_func(q, k, v, cu, cu, 1000, 1000, causal=True)
    torch.cuda.synchronize()
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, flash_attn_varlen_func(q, k, v, cu, cu, 1000, 1000, causal=True), atol=0, rtol=0)
    assert not torch.equal(out, expected)


# ------------------------------------------------------------------ attn_bias, paged keys, KV cache

from test_attn_bias import check_with_bias, inputs as bias_inputs, random_bias  # noqa: E402
from test_kvcache import run_case  # noqa: E402


@pytest.mark.parametrize("case", [
    ((2, 8, 1000, 1000), dict(causal=True)),
    ((1, 1, 1000, 1000), dict(softcap=10.0)),
    ((2, 1, 1, 1000), dict(window_size=(200, 30), sinks="random")),
], ids=["full-causal", "shared-softcap", "keypad-window-sinks"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_attn_bias_gpu(case, dtype):
    bias_shape, variants = case
    if variants.get("sinks") == "random":
        variants = dict(variants, sinks=torch.randn(8, device="cuda"))
    q, k, v = bias_inputs(dtype, 1000, 1000, device="cuda", batch=2, heads=8, heads_kv=2, head_dim=64)
    check_with_bias(q, k, v, random_bias(bias_shape, dtype, device="cuda"), **variants)


@pytest.mark.parametrize("page_size", [1, 16, 256])
def test_paged_varlen_gpu(page_size, monkeypatch):
    """Paged keys and values give the same bits as the same call on the packed tensors, through the same kernel:
    the portable one, which is the one paged variable-length calls take (the Hopper forward visits causal blocks in
    another order, see hopper_forward._key_order)."""
    from test_varlen import cu_seqlens_of, packed_inputs, paged_copy
    from flashtron import flash_attn_varlen_func
    from flashtron.kernels import hopper_forward
    monkeypatch.setattr(hopper_forward, "_DISABLED", True)
    lengths_q, lengths_k = [300, 1, 0, 1000], [700, 2000, 5, 1000]
    q, k, v = packed_inputs(lengths_q, lengths_k, 8, 2, 128, torch.bfloat16)
    cu_q, cu_k = cu_seqlens_of(lengths_q), cu_seqlens_of(lengths_k)
    kv_pages, table = paged_copy(torch.cat([k, v], dim=-1).detach(), lengths_k, page_size)
    args = [t.cuda() for t in (cu_q, cu_k)] + [max(lengths_q), max(lengths_k)]
    expected = flash_attn_varlen_func(q.detach().cuda(), k.detach().cuda(), v.detach().cuda(), *args, causal=True)
    out = flash_attn_varlen_func(q.detach().cuda(), *kv_pages.cuda().split(128, dim=-1), *args, causal=True,
                                 block_table=table.cuda())
    assert torch.equal(out, expected)


@pytest.mark.parametrize("case", [
    dict(batch=1, seqlen_q=1, seqlen_new=1, cache_len=20000, num_splits=0, causal=False),
    dict(batch=4, seqlen_q=3, seqlen_new=3, cache_len=3000, paged=True, page_size=16, num_splits=0),
    dict(batch=2, seqlen_q=1, seqlen_new=1, cache_len=5000, paged=True, page_size=5, num_splits=7,
         dtype=torch.bfloat16),
    dict(batch=3, seqlen_q=2, seqlen_new=2, cache_len=2000, batch_idx=True, leftpad=True, softcap=8.0,
         rotary=dict(interleaved=False, rotary_dim=16)),
    dict(batch=2, seqlen_q=4, seqlen_new=4, cache_len=1000, rotary=dict(interleaved=True, rotary_dim=24),
         window_size=(100, 0), causal=False),
], ids=["b1-split-auto", "paged16", "paged5-split7-bf16", "idx-leftpad-softcap-rotary", "window-rotary"])
def test_kvcache_gpu(case):
    run_case(device="cuda", **case)


@pytest.mark.sanitizer
def test_kvcache_sanitizer_cases():
    run_case(device="cuda", batch=2, seqlen_q=1, seqlen_new=1, cache_len=700, paged=True, page_size=3, num_splits=5)
    run_case(device="cuda", batch=3, seqlen_q=2, seqlen_new=2, cache_len=300, batch_idx=True, leftpad=True)
    q, k, v = bias_inputs(torch.float16, 300, 200, device="cuda")
    check_with_bias(q, k, v, random_bias((2, 1, 300, 1), torch.float16, device="cuda"), causal=True)


from test_xformers import bias_cases, check_against_reference  # noqa: E402


@pytest.mark.parametrize("case", bias_cases("cuda"), ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_xformers_gpu(case, dtype):
    check_against_reference(*case[1](), dtype, device="cuda")


@pytest.mark.parametrize("case", ["causal-wide", "causal-tall", "bool-mask", "float-mask-gqa"])
def test_scaled_dot_product_attention_gpu(case):
    from reference import assert_within_rule
    from flashtron import scaled_dot_product_attention
    batch, heads, heads_k, seqlen_q, seqlen_k, head_dim = 2, 8, 8, 700, 1100, 64
    kwargs, mask = {}, None
    if case == "causal-wide":
        kwargs["is_causal"] = True
    elif case == "causal-tall":
        seqlen_q, seqlen_k, kwargs["is_causal"] = 1100, 700, True
    elif case == "bool-mask":
        mask = torch.rand(batch, 1, seqlen_q, seqlen_k, device="cuda") > 0.3
    else:
        heads_k, kwargs["enable_gqa"] = 2, True
        mask = torch.randn(1, heads, seqlen_q, seqlen_k, device="cuda")
    q = torch.randn(batch, heads, seqlen_q, head_dim, device="cuda")
    k, v = (torch.randn(batch, heads_k, seqlen_k, head_dim, device="cuda") for _ in range(2))
    dout = torch.randn(batch, heads, seqlen_q, head_dim, device="cuda")

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        m = mask.to(dtype).requires_grad_() if mask is not None and mask.is_floating_point() else mask
        out = fn(*leaves, attn_mask=m, **kwargs)
        grads = torch.autograd.grad(out, leaves + ([m] if m is not None and m.requires_grad else []),
                                    dout.to(dtype))
        return out, grads

    ours, our_grads = run(scaled_dot_product_attention, torch.bfloat16)
    truth, truth_grads = run(F.scaled_dot_product_attention, torch.float64)
    plain, plain_grads = run(F.scaled_dot_product_attention, torch.bfloat16)
    assert_within_rule("out", ours, truth, plain, 2)
    for name, a, b, c in zip(("dq", "dk", "dv", "dmask"), our_grads, truth_grads, plain_grads):
        assert_within_rule(name, a, b, c, 3)


@pytest.mark.parametrize("shape", [(2, 2048, 2048, 8, 2, 128), (1, 1000, 3000, 4, 4, 64), (2, 513, 777, 4, 1, 256)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fp8_gpu(shape, causal):
    from test_fp8 import check, fp8_inputs
    check(*fp8_inputs(*shape, device="cuda"), causal=causal)
