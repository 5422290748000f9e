"""FP8's keys-innermost copy of v (kernels/transpose.py), against torch's permute, on odd shapes and strides.

A Triton kernel: it runs on a GPU, or on CPU tensors under TRITON_INTERPRET=1.  Outputs start poisoned (NaN's
byte, 0x7f), so a column the kernel should write and did not cannot pass.
"""

import pytest
import torch

from flashtron.kernels import transpose
from conftest import KERNEL_DEVICE as DEVICE, triton_kernel

pytestmark = triton_kernel
FP8 = torch.float8_e4m3fn


def _values(shape):
    # Random bytes of every value but NaN's pattern (0x7f / 0xff), so a poisoned byte cannot pass for data.
    data = torch.randint(0, 127, shape, dtype=torch.uint8) | (torch.randint(0, 2, shape, dtype=torch.uint8) << 7)
    return data.view(FP8).to(DEVICE)


def _poisoned(shape):
    return torch.full(shape, 0x7F, dtype=torch.uint8, device=DEVICE).view(FP8)


@pytest.mark.parametrize("batch, keys, heads, head_dim, columns", [
    (2, 37, 3, 64, 48), (1, 130, 2, 128, 144), (3, 1, 1, 40, 16), (1, 300, 1, 256, 300), (2, 16, 5, 96, 16)])
def test_dense_copy_is_the_permute_with_zero_columns_after(batch, keys, heads, head_dim, columns):
    v = _values((batch, keys, heads, head_dim))
    vt = transpose.keys_innermost(v, _poisoned((batch, heads * head_dim, columns)))
    expected = torch.zeros(batch, heads, head_dim, columns, dtype=torch.uint8)
    expected[..., :keys] = v.view(torch.uint8).permute(0, 2, 3, 1).cpu()
    assert torch.equal(vt.view(torch.uint8).cpu(), expected.view(batch, heads * head_dim, columns))


def test_strided_input_of_a_packed_kv():
    """v as the second half of a packed (B, S, 2, H, D) kv: rows 2 * H * D apart, batches further."""
    kv = _values((2, 45, 2, 3, 64))
    v = kv[:, :, 1]
    vt = transpose.keys_innermost(v, _poisoned((2, 3 * 64, 48)))
    expected = v.view(torch.uint8).permute(0, 2, 3, 1).reshape(2, 192, 45)
    assert torch.equal(vt.view(torch.uint8)[..., :45].cpu(), expected.cpu())
    assert not vt.view(torch.uint8)[..., 45:].any()


def test_targeted_columns_leave_the_others_alone():
    keys, heads, head_dim, columns = 50, 2, 64, 96
    v = _values((1, keys, heads, head_dim))
    target = torch.randperm(columns)[:keys].to(torch.int32)
    vt = transpose.keys_innermost(v, _poisoned((1, heads * head_dim, columns)), target.to(DEVICE))
    got = vt.view(torch.uint8)[0].cpu()
    assert torch.equal(got[:, target.long()], v.view(torch.uint8)[0].reshape(keys, heads * head_dim).t().cpu())
    untouched = torch.ones(columns, dtype=torch.bool)
    untouched[target.long()] = False
    assert (got[:, untouched] == 0x7F).all()


def test_mismatched_arguments_are_refused():
    v = _values((1, 20, 2, 64))
    with pytest.raises(ValueError, match="do not match"):
        transpose.keys_innermost(v, _poisoned((1, 128, 16)))  # fewer columns than keys
    with pytest.raises(ValueError, match="do not match"):
        transpose.keys_innermost(v, _poisoned((1, 64, 32)))
    with pytest.raises(TypeError, match="one-byte"):
        transpose.keys_innermost(v.to(torch.bfloat16), _poisoned((1, 128, 32)).to(torch.bfloat16))
