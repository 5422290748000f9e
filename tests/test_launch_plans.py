"""Launch plans (kernels/launch_plans.py): the Hopper host functions' prepared launches, kept per call signature.

The CPU tests pin the key and the table; the GPU tests run each Hopper host function twice on one signature (the
second call through its plan) and compare with the full path on the same inputs.
"""

import pytest
import torch

from flashtron import flash_attn_func, flash_attn_varlen_func
from flashtron.kernels import compiled, hopper_backward, hopper_forward, launch_plans
from test_hopper_forward import on_hopper
from test_varlen import cu_seqlens_of


def test_the_key_is_the_signature_not_the_data():
    a, b = torch.randn(2, 8, 3, 16), torch.randn(2, 8, 3, 16)
    key = launch_plans.key
    assert key((a, None), 0.5, -1, 0) == key((b, None), 0.5, -1, 0)
    different = [key((a.transpose(1, 2).contiguous().transpose(1, 2), None), 0.5, -1, 0),  # strides
                 key((a[:1], None), 0.5, -1, 0), key((a.half(), None), 0.5, -1, 0),  # shape, dtype
                 key((a.view(-1)[1:].view(-1)[:-1].view(-1), None), 0.5, -1, 0),  # shape and 4 bytes off alignment
                 key((a, a), 0.5, -1, 0), key((a, None), 0.25, -1, 0), key((a, None), 0.5, 10, 0)]
    assert len({key((a, None), 0.5, -1, 0), *different}) == len(different) + 1
    unaligned = torch.randn(2 * 8 * 3 * 16 + 1)[1:].view(2, 8, 3, 16)
    assert key((unaligned, None), 0.5, -1, 0) != key((a, None), 0.5, -1, 0)


def test_tables_remember_clear_and_start_over(monkeypatch):
    plans = launch_plans.table()
    launch_plans.remember(plans, "a", None)
    assert plans == {}
    launch_plans.remember(plans, "a", 1)
    assert plans == {"a": 1}
    launch_plans.clear()
    assert plans == {}
    for i in range(launch_plans.MAX_PLANS + 1):
        launch_plans.remember(plans, i, i)
    assert plans == {launch_plans.MAX_PLANS: launch_plans.MAX_PLANS}  # full: started over
    launch_plans.remember(plans, "b", 2)
    monkeypatch.setattr(hopper_forward, "PLAIN_LOOP_FROM", 0)  # conftest's monkeypatch forgets every plan
    assert plans == {}


@pytest.fixture
def prepared_calls(monkeypatch):
    """Counts the prepared launches (set before any plan is made: monkeypatch forgets them)."""
    monkeypatch.setattr(hopper_forward, "MIN_SEQLEN", dict.fromkeys(hopper_forward.MIN_SEQLEN, (0, 0)))
    monkeypatch.setattr(hopper_backward, "MIN_SEQLEN", dict.fromkeys(hopper_backward.MIN_SEQLEN, (0, 0)))
    calls = []
    original = compiled.Prepared.__call__

    def counting(self, *values):
        calls.append(self)
        return original(self, *values)
    monkeypatch.setattr(compiled.Prepared, "__call__", counting)
    return calls


def _step(inputs, dout, call):
    """out, lse and the gradients of one call on copies of `inputs`."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out, lse, _ = call(*leaves)
    out.backward(dout)
    return (out.detach(), lse, *(t.grad for t in leaves))


def _check_plans(make_inputs, call, prepared_calls, launches_per_step=4):
    """First call: the full path, which makes the plans.  Second call, on fresh inputs: through the plans.  Third,
    with the plans forgotten: the full path on the second's inputs, which the second must match (the forward, dK
    and dV bit for bit; dQ's float32 atomics may add in another order)."""
    launch_plans.clear()
    _step(*make_inputs(), call)
    assert prepared_calls == [] and hopper_forward._PLANS and hopper_backward._PLANS
    inputs, dout = make_inputs()
    planned = _step(inputs, dout, call)
    assert len(prepared_calls) == launches_per_step
    launch_plans.clear()
    full = _step(inputs, dout, call)
    assert len(prepared_calls) == launches_per_step
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), planned, full):
        assert not a.isnan().any(), name
        if name == "dq":
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
        else:
            assert torch.equal(a, b), name


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("shape, window", [((2, 300, 300, 4, 2, 128), (-1, 0)), ((1, 257, 520, 2, 2, 64), (-1, -1)),
                                           ((2, 700, 700, 2, 1, 128), (100, 0)), ((1, 400, 300, 4, 4, 64), (50, 20))],
                         ids=lambda x: "x".join(map(str, x)))
def test_dense_calls_through_their_plans(shape, window, prepared_calls):
    batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim = shape

    def make_inputs():
        q = torch.randn(batch, seqlen_q, heads, head_dim, dtype=torch.bfloat16, device="cuda")
        k, v = (torch.randn(batch, seqlen_k, heads_kv, head_dim, dtype=torch.bfloat16, device="cuda") for _ in "kv")
        return (q, k, v), torch.randn_like(q)
    _check_plans(make_inputs, lambda q, k, v: flash_attn_func(q, k, v, window_size=window, return_attn_probs=True),
                 prepared_calls)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("head_dim", [64, 128])
def test_variable_length_calls_through_their_plans(head_dim, prepared_calls):
    lengths_q, lengths_k = [130, 7, 300], [200, 7, 250]
    cu_q, cu_k = cu_seqlens_of(lengths_q, "cuda"), cu_seqlens_of(lengths_k, "cuda")

    def make_inputs():
        q = torch.randn(sum(lengths_q), 4, head_dim, dtype=torch.bfloat16, device="cuda")
        k, v = (torch.randn(sum(lengths_k), 2, head_dim, dtype=torch.bfloat16, device="cuda") for _ in "kv")
        return (q, k, v), torch.randn_like(q)
    _check_plans(make_inputs, lambda q, k, v: flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=True, return_attn_probs=True), prepared_calls)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("causal", [False, True])
def test_fp8_calls_through_their_plans(causal, prepared_calls):
    """Dense FP8 forwards: v's keys-innermost copy and the kernel, both prepared on the second call of a signature,
    against the full path on the same inputs."""
    batch, seqlen, heads, heads_kv, head_dim = 2, 333, 4, 2, 128

    def make_inputs():
        q = torch.randn(batch, seqlen, heads, head_dim, device="cuda").to(torch.float8_e4m3fn)
        k, v = (torch.randn(batch, seqlen, heads_kv, head_dim, device="cuda").to(torch.float8_e4m3fn) for _ in "kv")
        descales = [torch.rand(batch, heads_kv, device="cuda") + 0.5 for _ in "qkv"]
        return lambda: [t.clone() for t in flash_attn_func(
            q, k, v, causal=causal, q_descale=descales[0], k_descale=descales[1], v_descale=descales[2],
            return_attn_probs=True)[:2]]
    launch_plans.clear()
    make_inputs()()
    assert prepared_calls == [] and hopper_forward._PLANS
    run = make_inputs()
    planned = run()
    assert len(prepared_calls) == 2  # the copy of v, the kernel
    launch_plans.clear()
    full = run()
    assert len(prepared_calls) == 2
    for a, b in zip(planned, full):
        assert not a.isnan().any()
        assert torch.equal(a, b)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_decoding_through_its_plan(num_splits, prepared_calls):
    """Decoding calls, as serving makes them: new queries and cache contents, the same shapes."""
    from flashtron import flash_attn_with_kvcache
    batch, heads, heads_kv, head_dim, page_size, pages = 3, 32, 8, 128, 16, 40
    table = torch.randperm(batch * pages, device="cuda").reshape(batch, -1).to(torch.int32)
    seqlens = torch.tensor([640, 1, 333], dtype=torch.int32, device="cuda")

    def call():
        q = torch.randn(batch, 1, heads, head_dim, dtype=torch.bfloat16, device="cuda")
        k, v = (torch.randn(batch * pages, page_size, heads_kv, head_dim, dtype=torch.bfloat16, device="cuda")
                for _ in "kv")
        inputs = (q, k, v)
        run = lambda: [t.clone() for t in flash_attn_with_kvcache(  # noqa: E731
            *inputs, cache_seqlens=seqlens, block_table=table, num_splits=num_splits, return_softmax_lse=True)]
        return run
    launch_plans.clear()
    call()()
    assert prepared_calls == []
    run = call()
    planned = run()
    assert len(prepared_calls) == 1  # (the merge of splits is launched through FastLaunch)
    launch_plans.clear()
    for a, b in zip(planned, run()):
        assert not a.isnan().any() and torch.equal(a, b)
