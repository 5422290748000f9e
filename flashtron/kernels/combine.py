"""Merging split-KV partials: the second half of flash-decoding.

With SPLIT, the forward kernel gives each of num_splits programs a share of a
tile's keys; each writes its normalised partial output O_s (float32) and its
log-sum-exp L_s.  Softmax over the union is their LSE-weighted average:

    L = log sum_s exp(L_s),    O = sum_s exp(L_s - L) O_s.

A split that saw no key has L_s = +inf (flashtron's "saw nothing") and weight
0; a row no split saw keeps output 0 and lse +inf.  One program merges one
query row of one head, over every split, in fp32.
"""

import triton
import triton.language as tl

from flashtron.kernels import compiled
from flashtron.kernels.precision import downcast

LOG2E = tl.constexpr(1.4426950408889634)


@compiled.fast_launch
@triton.jit
def combine_splits_kernel(
        OutAccum, LseAccum, Out, Lse,
        stride_acc_split, stride_acc_b, stride_acc_m, stride_acc_h,
        stride_lse_acc_split, stride_lse_acc_b, stride_lse_acc_h,
        stride_ob, stride_om, stride_oh,
        stride_lse_b, stride_lse_h,
        num_splits, num_heads, seqlen_q, head_dim,
        BLOCK_SPLITS: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    head = pid % num_heads
    row = (pid // num_heads) % seqlen_q
    batch = pid // (num_heads * seqlen_q)
    splits = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    split_in = splits < num_splits
    lse_s = tl.load(LseAccum + splits.to(tl.int64) * stride_lse_acc_split + batch.to(tl.int64) * stride_lse_acc_b
                    + head.to(tl.int64) * stride_lse_acc_h + row, mask=split_in, other=float("inf"))
    # Natural log in, base 2 inside; +inf (saw nothing) weighs nothing.
    logits = tl.where(lse_s == float("inf"), float("-inf"), lse_s * LOG2E)
    top = tl.max(logits, 0)
    saw_nothing = top == float("-inf")
    weights = tl.math.exp2(logits - tl.where(saw_nothing, 0.0, top))
    total = tl.sum(weights, 0)
    # The partials' load does not wait for the lse's (a decoding step's merge is two memory latencies, not
    # three).  A split whose lse is +inf contributes 0 whatever its output slot holds (NaN included).
    partials = tl.load(OutAccum + splits.to(tl.int64)[:, None] * stride_acc_split + batch.to(tl.int64) * stride_acc_b
                       + row.to(tl.int64) * stride_acc_m + head.to(tl.int64) * stride_acc_h + offs_d[None, :],
                       mask=split_in[:, None] & (offs_d < head_dim)[None, :], other=0.0)
    partials = tl.where((lse_s != float("inf"))[:, None], partials, 0.0)
    out = tl.sum(partials * (weights / tl.where(saw_nothing, 1.0, total))[:, None], 0)
    lse = tl.where(saw_nothing, float("inf"), (top + tl.math.log2(total)) / LOG2E)
    tl.store(Out + batch.to(tl.int64) * stride_ob + row.to(tl.int64) * stride_om + head.to(tl.int64) * stride_oh
             + offs_d, downcast(out, Out.dtype.element_ty, UPCAST), mask=offs_d < head_dim)
    tl.store(Lse + batch.to(tl.int64) * stride_lse_b + head.to(tl.int64) * stride_lse_h + row, lse)
