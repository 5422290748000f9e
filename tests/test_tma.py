"""TMA tiles (kernels/tma.py): which layouts get a descriptor, and that the descriptor path computes
exactly what the pointer path computes, for every way a sequence's rows can be found (dense, packed
views, variable length, KV-cache batch rows and left padding)."""

import pytest
import torch

from flashtron import (flash_attn_func, flash_attn_qkvpacked_func, flash_attn_varlen_func,
                       flash_attn_with_kvcache)
from flashtron.kernels import configs, hopper_backward, tma
from flashtron.kernels.configs import KernelConfig

from conftest import INTERPRET


def test_matrix_view_eligibility():
    make = lambda *shape, dtype=torch.bfloat16: torch.randn(*shape).to(dtype)
    dense = make(2, 37, 4, 64)
    desc = tma.matrix_view(dense, False, 16, 64, interpret=True)
    assert desc.shape == [74, 256] and desc.strides == [256, 1] and desc.block_shape == [16, 64]
    # k of a packed qkv: rows 3 * H * D apart, batch entries still one after another.
    k = make(2, 37, 3, 4, 64)[:, :, 1]
    desc = tma.matrix_view(k, False, 16, 64, interpret=True)
    assert desc.shape == [74, 256] and desc.strides == [768, 1]
    # Packed variable-length rows.
    assert tma.matrix_view(make(91, 4, 64), True, 16, 64, interpret=True).shape == [91, 256]
    # Refused: padded head dim, fp32, heads not side by side, batch entries apart, odd row stride.
    assert tma.matrix_view(make(2, 37, 4, 48), False, 16, 64, interpret=True) is None
    assert tma.matrix_view(make(2, 37, 4, 64, dtype=torch.float32), False, 16, 64, interpret=True) is None
    assert tma.matrix_view(make(2, 4, 37, 64).transpose(1, 2), False, 16, 64, interpret=True) is None
    assert tma.matrix_view(make(2, 40, 4, 64)[:, :37], False, 16, 64, interpret=True) is None
    assert tma.matrix_view(make(2, 37, 4, 65)[..., :64], False, 16, 64, interpret=True) is None
    # A single batch entry may sit anywhere.
    assert tma.matrix_view(make(1, 40, 4, 64)[:, :37], False, 16, 64, interpret=True) is not None
    # Not outside the interpreter on the CPU.
    assert tma.matrix_view(dense, False, 16, 64, interpret=False) is None


def _pointer_configs(device, head_dim):
    """The configs the kernels would pick, with TMA off."""
    probe = torch.empty(1, device=device, dtype=torch.bfloat16)
    chosen = {kernel: configs.select(kernel, probe, head_dim) for kernel in ("forward", "dkdv", "dq")}
    assert all(c.tma for c in chosen.values())
    return {kernel: KernelConfig(c.block_m, c.block_n, c.num_warps, c.num_stages) for kernel, c in chosen.items()}


def _both_paths(fn, device, head_dim):
    """fn() under the tables' configs (TMA) and with TMA off; the outputs must be equal bit for bit."""
    with_tma = fn()
    with configs.override(**_pointer_configs(device, head_dim)):
        without = fn()
    for a, b in zip(with_tma, without):
        assert torch.equal(a, b)


def _cases(device, dtype, d, n):
    """Lengths are multiples of n: the GPU's tiles are larger, and the TMA path needs whole blocks."""
    def dense():
        q = torch.randn(2, 77 * n, 4, d, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(2, 93 * n, 2, d, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(2, 93 * n, 2, d, device=device, dtype=dtype, requires_grad=True)
        out = flash_attn_func(q, k, v, causal=True, window_size=(40 * n, 3))
        return (out, *torch.autograd.grad(out, (q, k, v), torch.randn_like(out)))

    def packed():
        qkv = torch.randn(3, 70 * n, 3, 4, d, device=device, dtype=dtype, requires_grad=True)
        out = flash_attn_qkvpacked_func(qkv, causal=True)
        return (out, *torch.autograd.grad(out, (qkv,), torch.randn_like(out)))

    def varlen():
        cu = torch.tensor([0, 50, 50, 131, 140], dtype=torch.int32, device=device) * n
        q = torch.randn(140 * n, 4, d, device=device, dtype=dtype, requires_grad=True)
        k = torch.randn(140 * n, 4, d, device=device, dtype=dtype, requires_grad=True)
        v = torch.randn(140 * n, 4, d, device=device, dtype=dtype, requires_grad=True)
        out = flash_attn_varlen_func(q, k, v, cu, cu, 81 * n, 81 * n, causal=True)
        return (out, *torch.autograd.grad(out, (q, k, v), torch.randn_like(out)))

    def kvcache():
        # Three query tokens per row (not a decode tile), cache rows picked by cache_batch_idx,
        # left padding, and an appended k/v.
        q = torch.randn(2, 3, 4, d, device=device, dtype=dtype)
        k_cache = torch.randn(3, 90 * n, 4, d, device=device, dtype=dtype)
        v_cache = torch.randn(3, 90 * n, 4, d, device=device, dtype=dtype)
        k_new = torch.randn(2, 3, 4, d, device=device, dtype=dtype)
        v_new = torch.randn(2, 3, 4, d, device=device, dtype=dtype)
        out = flash_attn_with_kvcache(
            q, k_cache.clone(), v_cache.clone(), k_new, v_new, causal=True,
            cache_seqlens=torch.tensor([70, 41], dtype=torch.int32, device=device) * n,
            cache_batch_idx=torch.tensor([2, 0], dtype=torch.int32, device=device),
            cache_leftpad=torch.tensor([5, 17], dtype=torch.int32, device=device) * n)
        return (out,)

    return {"dense": dense, "packed": packed, "varlen": varlen, "kvcache": kvcache}


@pytest.mark.skipif(not INTERPRET, reason="TMA is a kernel path: CPU tensors reach it under the interpreter")
@pytest.mark.parametrize("case", ["dense", "packed", "varlen", "kvcache"])
def test_descriptor_and_pointer_paths_agree(case):
    torch.manual_seed(0)
    fn = _cases("cpu", torch.bfloat16, 64, 1)[case]
    _both_paths(lambda: (torch.manual_seed(1), fn())[1], "cpu", 64)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["dense", "packed", "varlen", "kvcache"])
@pytest.mark.parametrize("head_dim", [128, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_descriptor_and_pointer_paths_agree_gpu(case, head_dim, dtype, monkeypatch):
    # The portable kernels' two paths; the Hopper backward (float32 atomics for dQ) is not bitwise repeatable.
    monkeypatch.setattr(hopper_backward, "_DISABLED", True)
    fn = _cases("cuda", dtype, head_dim, 7)[case]
    _both_paths(lambda: (torch.manual_seed(1), fn())[1], "cuda", head_dim)
