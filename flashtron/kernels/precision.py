"""The precision policy of the kernels: how tiles are multiplied and rounded.

Every tl.dot goes through `mma` and every narrowing of an fp32 tile to the
input dtype through `downcast`.  fp16/bf16 operands use the tensor cores with
fp32 accumulation; fp32 operands use "ieee" (exact fp32) unless the caller
opted into tf32.

Triton's CPU interpreter (TRITON_INTERPRET=1) has two bf16 traps, seen with
triton 3.6: tl.dot on bf16 operands returns wrong results (bf16 is kept as raw
uint16 bits), and fp32 -> bf16 conversion truncates instead of rounding to
nearest even, even with fp_downcast_rounding="rtne".  fp32 -> float8e4nv
conversion there also goes wrong near a power of two (0.4978 became 0.25).
The launcher sets UPCAST for bf16 and fp8 under the interpreter: operands are
widened to fp32 before the dot, and downcasts round explicitly (the conversion
of an exactly representable value is right), so the interpreter computes what
the GPU does.
"""

import triton
import triton.language as tl


@triton.jit
def mma(a, b, acc, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


@triton.jit
def downcast(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 tile -> dtype, rounding to nearest even."""
    if UPCAST and dtype == tl.bfloat16:
        # Round the fp32 bits to their top 16 (ties to even); the truncating conversion is then exact.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(dtype)
    elif UPCAST and dtype == tl.float8e4nv:
        # e4m3: 3 mantissa bits for normal values (ties to even); multiples of 2**-9 below 2**-6.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
        subnormal = tl.floor(x * 512.0 + 0.5) / 512.0
        return tl.where(tl.abs(x) < 0.015625, subnormal, bits.to(tl.float32, bitcast=True)).to(dtype)
    else:
        return x.to(dtype)
