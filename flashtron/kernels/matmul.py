"""The one place where tiles are multiplied.

Every tl.dot of the attention kernels goes through `mma`, so the precision
policy lives here: fp16/bf16 operands use the tensor cores with fp32
accumulation; fp32 operands use "ieee" (exact fp32) unless the caller opted
into tf32.  Under Triton's CPU interpreter, tl.dot on bf16 operands returns
wrong results (triton 3.6 keeps bf16 as raw uint16 bits), so the launcher sets
UPCAST there and the operands are widened to fp32 first; the loads, stores and
roundings of the bf16 path stay exactly as on the GPU.
"""

import triton
import triton.language as tl


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
