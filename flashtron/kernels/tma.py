"""Tiles read by Hopper's tensor memory accelerator (TMA) instead of per-thread pointers.

The loops stream tiles of one operand pair (K and V in the forward and the dQ
pass, Q and dO in the dK/dV pass).  A pointer tile costs every thread 64-bit
addresses in registers and an add per element per block; a TMA descriptor
names the whole box and the copy engine fetches it into shared memory.

A tensor in flashtron's layout, dense (batch, seqlen, heads, headdim) or
packed (total, heads, headdim), is seen as one matrix of rows (batch * seqlen,
or total) by heads * headdim columns, when its strides allow: unit stride on
headdim, heads side by side, batch entries one after another, 16-byte aligned
rows.  A tile is then the box [BLOCK rows, headdim] at (first row, head *
headdim).  Only blocks wholly inside their sequence are read this way (the
loops' BAND_MASK segment); the block holding a sequence's end keeps masked
pointer loads, so a box never reads a neighbouring sequence's rows.

Whether a kernel wants TMA is part of its launch config (configs.KernelConfig.tma:
on where it measured faster).  `operand_pair` then checks both operands' layouts
on the host and hands the kernel descriptors or, failing that, the tensors (the
kernel's TMA switch is off and it takes pointer loads).  FLASHTRON_TMA=0 turns
TMA off everywhere, for comparisons.
"""

import os
from typing import Optional

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from flashtron.kernels import hardware

_DISABLED = os.environ.get("FLASHTRON_TMA", "1") in ("", "0")


def supported(t: torch.Tensor, interpret: bool) -> bool:
    """TMA is on Hopper and later; Triton's interpreter emulates it (so CI runs the same code)."""
    if _DISABLED or t.dtype not in (torch.float16, torch.bfloat16):
        return False
    if t.device.type == "cuda":
        return hardware.capability(t.device)[0] >= 9
    return interpret


def matrix_view(t: torch.Tensor, varlen: bool, block_rows: int, block_d: int,
                interpret: bool) -> Optional[TensorDescriptor]:
    """A descriptor of t as a (rows, heads * headdim) matrix with [block_rows, block_d] boxes, or None
    where the strides do not allow that view (or block_d pads the head dim)."""
    if not supported(t, interpret):
        return None
    heads, head_dim = t.shape[-2], t.shape[-1]
    row_stride = t.stride(-3)
    if (head_dim != block_d or t.stride(-1) != 1 or t.stride(-2) != head_dim or row_stride < heads * head_dim
            or row_stride % 8 != 0 or t.data_ptr() % 16 != 0 or t.numel() == 0):
        return None
    if varlen:
        rows = t.shape[0]
    else:
        if t.shape[0] > 1 and t.stride(0) != t.shape[1] * row_stride:
            return None
        rows = t.shape[0] * t.shape[1]
    if rows >= 2**31:
        return None
    return TensorDescriptor(t, [rows, heads * head_dim], [row_stride, 1], [block_rows, block_d])


def operand_pair(a: torch.Tensor, b: torch.Tensor, varlen: bool, block_rows: int, block_d: int, wanted: bool,
                 interpret: bool) -> tuple:
    """The kernel arguments for the two streamed operands of a loop, and the TMA switch: (descriptor
    of a, descriptor of b, True) when TMA is wanted and both layouts allow it, else (a, b, False)."""
    if wanted:
        desc_a = matrix_view(a, varlen, block_rows, block_d, interpret)
        desc_b = matrix_view(b, varlen, block_rows, block_d, interpret)
        if desc_a is not None and desc_b is not None:
            return desc_a, desc_b, True
    return a, b, False
