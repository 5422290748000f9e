"""The forward on Hopper (sm_90), in Gluon: warp-specialised, with the softmax hidden behind the matmuls.

Triton's own pipeliner waits on every wgmma as soon as it is issued, so in the portable kernel
(forward.py) the tensor cores idle while the softmax runs.  This kernel is written in Gluon
(`triton.experimental.gluon`, part of Triton), which exposes Hopper's asynchronous wgmma, mbarriers,
the TMA copy engine and warp specialisation, and takes FlashAttention-3's structure:

- A producer partition (one warpgroup, 24 or 32 registers per thread) copies Q once per tile, then K and V
  block by block into shared-memory rings.  Each ring slot has a "full" mbarrier (completed by the
  copy's transaction bytes) and an "empty" one (one arrival per consumer warpgroup).
- Two or three consumer partitions (one warpgroup each, 240 or 160 registers; see `consumer_count`) own 64
  of the tile's 128 or 192 query rows.
  For key block j a consumer issues S_j = Q K_j^T, then O += P_{j-1} V_{j-1}, waits for S_j only and
  computes block j's softmax while P_{j-1} V_{j-1} still runs; then it waits for that too.  Nothing
  asynchronous crosses the loop's back-edge (ptxas would otherwise serialise every wgmma).  The
  consumers are not synchronised with each other, so one's matmuls can fill another's softmax.
  Tiles visit their key blocks from the last (except at D = 256, see `_key_order`): the block that crosses
  the diagonal or the sequence's end is the first, computed alone before the loop, so an unmasked call's loop
  can be compiled without the masked softmax.
- Persistent: one program per SM takes tiles in turn (see `_my_tile_count`), so the producer loads
  the next tile while the consumers finish this one; each consumer writes its output through shared
  memory and one TMA box.
- FP8 (q, k, v float8_e4m3fn, D = 128): both matmuls on the fp8 tensor cores.  fp8 wgmma reads its
  operands with the reduction dim contiguous, so V is copied keys-innermost first (`values_transposed`), and P
  goes to P V through shared memory (the output tile) rather than registers.  The descales fold into the
  scores' scale; the output is bfloat16.

Tensors are read and written through 3-D TMA boxes over (batch, seqlen, heads * headdim): rows past a
sequence's end read as zeros and are not written, so no box touches a neighbouring batch entry.
Variable-length batches (VARLEN) are packed into one batch entry, so a box there can reach the next
sequence's rows: keys past the end are masked, and an output block that ends past its sequence is
stored from registers, rows past the end left out.  This kernel covers the common training shapes
(see `unsupported_reason`); everything else, and every other device, takes forward.py.
It is checked on the GPU against forward.py (Gluon has no interpreter).
"""

import functools
import os
from typing import Optional

import torch

from flashtron.kernels import compiled, hardware, launch_plans, transpose

try:  # Gluon ships with Triton >= 3.5.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    _GLUON = True
except ImportError:  # pragma: no cover - older Triton
    _GLUON = False

_DISABLED = os.environ.get("FLASHTRON_GLUON", "1") in ("", "0")
ROWS = 64  # query rows per consumer warpgroup; a tile has 2 or 3 consumers (see consumer_count)
CONSUMER_REGISTERS = {2: 240, 3: 160}  # per consumer thread; the producer keeps 24 of 512 (32 with three)
CAUSAL_THREE_FROM = 8192  # see consumer_count
THREE_MAX_PADDING = 1.06  # see consumer_count
# Keys per block, by head dim.  At D = 256 a 128-key block's scores and the output (64 + 128 fp32 registers per
# thread) would leave too little of a consumer's 240.
BLOCK_N = {64: 128, 128: 128, 256: 64}
# The head dims this kernel takes, each from a sequence length (the longer of Sq and Sk; with variable lengths,
# the longest) up: (dense, variable-length).  Measured on an H200 against forward.py:
# D = 64 (BENCHMARKS.md, session 18): dense non-causal 1.03x at 1k, 1.07x-1.15x at 2k-3k, causal 1.00x at 1k,
# 1.08x-1.12x at 2k-3k; variable-length (64 sequences from 128 tokens) 0.63x-0.98x up to 3k, one program per tile.
# D = 256 (session 21), dense, non-causal / causal: 1.35x / 1.52x at 1k, 1.32x / 1.42x at 2k, 1.25x-1.28x / 1.25x-1.34x
# at 4k-16k; variable-length (64 sequences from 128 tokens, MHA and GQA) 1.37x-1.46x up to 1k, 1.21x-1.31x at 2k-8k.
MIN_SEQLEN = {64: (0, 4096), 128: (0, 0), 256: (0, 0)}
# FP8 (float8_e4m3fn q, k, v with descales, bfloat16 out): the head dims taken, from any length.  At
# D = 128 1.07x-1.12x of forward.py's FP8 at 4k-16k; at D = 64 0.92x-1.09x, so forward.py keeps it (BENCHMARKS.md,
# session 21).  Variable-length batches too (1.18x-5.0x over forward.py's FP8, 64 sequences from 128 tokens): there
# v's keys-innermost copy starts each sequence at a multiple of 16 keys, since a TMA box whose innermost start is
# not 16-byte aligned faults (illegal instruction, session 21).
FP8_HEAD_DIMS = (128,)
K_STAGES, V_STAGES = 2, 2
PLAIN_LOOP_FROM = 4096  # see _key_order
MASK_FIRST_WINDOW = 512  # see mask_first
# launch_plans.key -> the prepared launch of `forward`: the kernel's (fp16 and bf16), or (v's copy, the copy's shape,
# the kernel) for dense FP8 calls.  FP8 variable-length calls take the full path each time (their copy's columns
# are computed per call, on the device).
_PLANS = launch_plans.table()
LOG2E = 1.4426950408889634


def _box(t: torch.Tensor) -> Optional[tuple]:
    """(shape, strides) of t (batch, seqlen, heads, headdim) seen as (batch, seqlen, heads * headdim), or None
    where its strides do not allow a TMA box (unit stride on headdim, heads side by side, 16-byte aligned rows
    and batches)."""
    batch, seqlen, heads, head_dim = t.shape
    batch_stride, row_stride, head_stride, dim_stride = t.stride()
    if dim_stride != 1 or head_stride != head_dim or t.data_ptr() % 16:
        return None
    if row_stride < heads * head_dim or (batch > 1 and batch_stride < seqlen * row_stride):
        return None  # rows or batch entries overlap (an expanded tensor)
    if (row_stride * t.element_size()) % 16 or (batch_stride * t.element_size()) % 16:
        return None
    return [batch, seqlen, heads * head_dim], [batch_stride, row_stride, 1]


def descriptor(t: torch.Tensor, box: tuple, layout=None):
    """A TMA descriptor of `box` boxes over t (batch, seqlen, heads, headdim), which `_box` accepted; the
    shared layout is the default one for the box unless given."""
    shape, strides = _box(t)
    layout = layout or _box_layout(box, t.dtype)
    if not _PLAIN_DESCRIPTOR:
        return TensorDescriptor(t, shape, strides, list(box), layout)
    # TensorDescriptor's own checks (alignment, strides, block shape) repeat what _box and the kernels' fixed
    # boxes guarantee, at 5-6 µs of host time per descriptor on the H200 machines; an eager step makes 11.
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(base=t, shape=shape, strides=strides, block_shape=list(box), layout=layout, padding="zero")
    return desc


# The fields of Gluon's TensorDescriptor dataclass (Triton 3.5, 3.6) that `descriptor` fills in itself.
_PLAIN_DESCRIPTOR = (_GLUON and "__slots__" not in vars(TensorDescriptor)
                     and set(getattr(TensorDescriptor, "__dataclass_fields__", ())) == {
                         "base", "shape", "strides", "block_shape", "layout", "padding"})


def unsupported_reason(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p,
                       plain: bool, seqlens=None, check_length: bool = True) -> Optional[str]:
    """None when this kernel computes the call, else why the portable kernel does.  q, k, v are (B, S, H, D):
    a variable-length call passes its packed tensors as (1, total, H, D) and seqlens = (max_seqlen_q,
    max_seqlen_k).  plain: no paged, cache, split, seqused or bias layout.  check_length=False leaves
    MIN_SEQLEN out (the backward has its own)."""
    if not _GLUON or _DISABLED:
        return "Gluon unavailable or disabled (FLASHTRON_GLUON=0)"
    if hardware.capability(q.device) != (9, 0):
        return "not an sm_90 GPU"
    if not plain:
        return "paged, split, cache, seqused or bias layouts"
    if q.dtype == torch.float8_e4m3fn:
        if q.shape[-1] not in FP8_HEAD_DIMS:
            return f"FP8 at head dim {q.shape[-1]} (taken at {FP8_HEAD_DIMS})"
    elif q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in MIN_SEQLEN:
        return f"dtype {q.dtype} or head dim {q.shape[-1]} (needs fp16/bf16, head dim in {tuple(MIN_SEQLEN)})"
    elif check_length and max(seqlens or (q.shape[1], k.shape[1])) < MIN_SEQLEN[q.shape[-1]][seqlens is not None]:
        return f"short sequences at head dim {q.shape[-1]} (the portable kernel is as fast or faster there)"
    if softcap > 0 or alibi_slopes is not None or sinks is not None or dropout_p > 0 or not softmax_scale > 0:
        return "softcap, ALiBi, sinks, dropout or a non-positive scale"
    if _box(q) is None or _box(k) is None or _box(v) is None:
        return "strides do not allow TMA boxes"
    return None


if _GLUON:
    from triton.language.core import _aggregate as aggregate

    @gluon.constexpr_function
    def _acc_layout(cols, mma_k):
        """The wgmma accumulator layout of one warpgroup's (64 rows, cols) tile; mma_k is the instruction's
        reduction (16 for 16-bit operands, 32 for fp8)."""
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, cols, mma_k])

    @aggregate
    class _Shared:
        """What every partition of one CTA sees: descriptors, rings, barriers and the problem's shape."""
        q_desc: tma.tensor_descriptor
        k_desc: tma.tensor_descriptor
        v_desc: tma.tensor_descriptor  # FP8: over v's keys-innermost copy (see `values_transposed`)
        q_smem: gl.shared_memory_descriptor  # (consumers, 1, 64 rows, headdim)
        k_smem: gl.shared_memory_descriptor  # (K ring, 1, keys, headdim)
        v_smem: gl.shared_memory_descriptor  # (V ring, 1, keys, headdim); FP8: (V ring, 1, headdim, keys)
        o_desc: tma.tensor_descriptor
        o_smem: gl.shared_memory_descriptor  # (consumers, 1, 64 rows, headdim): the output's way out (O_IN_Q: q_smem);
        # FP8: also each block's P on its way to P V
        q_full: gl.shared_memory_descriptor
        q_empty: gl.shared_memory_descriptor
        k_full: gl.shared_memory_descriptor
        k_empty: gl.shared_memory_descriptor
        v_full: gl.shared_memory_descriptor
        v_empty: gl.shared_memory_descriptor
        Out: gl.tensor  # the output itself, for VARLEN tiles that end past their sequence
        Lse: gl.tensor
        lse_head_stride: gl.tensor  # VARLEN only: softmax_lse is (heads, total_q)
        CuSeqlensQ: gl.tensor  # VARLEN only
        CuSeqlensK: gl.tensor
        num_heads: gl.tensor
        group: gl.tensor
        seqlen_q: gl.tensor  # VARLEN: the longest sequence's
        seqlen_k: gl.tensor
        num_m_blocks: gl.tensor
        num_tiles: gl.tensor
        qk_scale_log2: gl.tensor
        window_left: gl.tensor
        window_right: gl.tensor
        Descale: gl.tensor  # FP8: float32 (3, batch, kv heads), the q, k and v factors
        descale_plane: gl.tensor
        VStarts: gl.tensor  # FP8 with VARLEN: each sequence's first key in v's copy (see `values_transposed`)
        HAS_LEFT: gl.constexpr
        HAS_RIGHT: gl.constexpr
        ACROSS_HEADS: gl.constexpr
        VARLEN: gl.constexpr
        O_IN_Q: gl.constexpr  # the output leaves through the consumers' Q tiles (see `o_in_q`)
        FP8: gl.constexpr
        FROM_LAST: gl.constexpr  # each tile visits its key blocks from the last (see `_key_order`)
        PLAIN_LOOP: gl.constexpr  # and its loop has no masked softmax (see `_key_order`)
        MASK_FIRST: gl.constexpr  # a block masked at run time takes the mask, then the one softmax (see `mask_first`)

        @gluon.constexpr_function
        def __init__(self, q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, o_desc, o_smem, q_full, q_empty, k_full,
                     k_empty, v_full, v_empty, Out, Lse, lse_head_stride, CuSeqlensQ, CuSeqlensK, num_heads,
                     group, seqlen_q, seqlen_k, num_m_blocks, num_tiles, qk_scale_log2, window_left,
                     window_right, Descale, descale_plane, VStarts, HAS_LEFT, HAS_RIGHT, ACROSS_HEADS, VARLEN, O_IN_Q,
                     FP8, FROM_LAST, PLAIN_LOOP, MASK_FIRST):
            self.q_desc = q_desc
            self.k_desc = k_desc
            self.v_desc = v_desc
            self.q_smem = q_smem
            self.k_smem = k_smem
            self.v_smem = v_smem
            self.o_desc = o_desc
            self.o_smem = o_smem
            self.q_full = q_full
            self.q_empty = q_empty
            self.k_full = k_full
            self.k_empty = k_empty
            self.v_full = v_full
            self.v_empty = v_empty
            self.Out = Out
            self.Lse = Lse
            self.lse_head_stride = lse_head_stride
            self.CuSeqlensQ = CuSeqlensQ
            self.CuSeqlensK = CuSeqlensK
            self.num_heads = num_heads
            self.group = group
            self.seqlen_q = seqlen_q
            self.seqlen_k = seqlen_k
            self.num_m_blocks = num_m_blocks
            self.num_tiles = num_tiles
            self.qk_scale_log2 = qk_scale_log2
            self.window_left = window_left
            self.window_right = window_right
            self.Descale = Descale
            self.descale_plane = descale_plane
            self.VStarts = VStarts
            self.HAS_LEFT = gl.constexpr(HAS_LEFT)
            self.HAS_RIGHT = gl.constexpr(HAS_RIGHT)
            self.ACROSS_HEADS = gl.constexpr(ACROSS_HEADS)
            self.VARLEN = gl.constexpr(VARLEN)
            self.O_IN_Q = gl.constexpr(O_IN_Q)
            self.FP8 = gl.constexpr(FP8)
            self.FROM_LAST = gl.constexpr(FROM_LAST)
            self.PLAIN_LOOP = gl.constexpr(PLAIN_LOOP)
            self.MASK_FIRST = gl.constexpr(MASK_FIRST)

    @gluon.jit
    def _my_tile_count(a):
        """How many tiles this program computes.  Programs take tiles in rounds of num_programs, in
        snake order (round r runs forward when r is even, backward when odd): with tiles sorted heaviest
        first, every program's sum of work is then within one tile of the others'."""
        programs = gl.num_programs(0)
        pid = gl.program_id(0)
        rounds = a.num_tiles // programs
        remaining = a.num_tiles - rounds * programs
        position = gl.where(rounds % 2 == 0, pid, programs - 1 - pid)
        return rounds + gl.where(position < remaining, 1, 0)

    @gluon.jit
    def _tile_of(i):
        """This program's i-th tile (see _my_tile_count)."""
        programs = gl.num_programs(0)
        pid = gl.program_id(0)
        return i * programs + gl.where(i % 2 == 0, pid, programs - 1 - pid)

    @gluon.jit
    def _sequence(a, batch):
        """(box batch, first query row, first key row, seqlen_q, seqlen_k) of sequence `batch`: in a dense
        call its batch entry, rows from 0; with VARLEN, rows cu_seqlens[batch] on of the packed tensors, seen
        as one batch entry (a box may then read a neighbouring sequence's rows: they are masked or not
        written, never used)."""
        if a.VARLEN:
            q_start = gl.load(a.CuSeqlensQ + batch)
            k_start = gl.load(a.CuSeqlensK + batch)
            seqlen_q = gl.load(a.CuSeqlensQ + batch + 1) - q_start
            seqlen_k = gl.load(a.CuSeqlensK + batch + 1) - k_start
            return batch * 0, q_start, k_start, seqlen_q, seqlen_k
        else:
            return batch, batch * 0, batch * 0, a.seqlen_q, a.seqlen_k

    @gluon.jit
    def _row_stats(a, box_batch, head, q_start):
        """Where a sequence's row statistics (softmax_lse, delta) start: (batch, heads, seqlen_q), or with
        VARLEN (heads, total_q)."""
        if a.VARLEN:
            return head.to(gl.int64) * a.lse_head_stride + q_start
        else:
            return (box_batch * a.num_heads + head).to(gl.int64) * a.seqlen_q

    @gluon.jit
    def _tile(a, tile):
        """(sequence (see _sequence), batch entry (the sequence's index), head, first query row, first key block,
        key blocks to visit) of a tile.
        Tiles are numbered block-fastest (one head's tiles share K and V in L2), or with ACROSS_HEADS (causal
        and long windows, see `across_heads`), head-fastest.  With a right window edge the last query blocks,
        the heaviest, come first, so programs taking tiles in turn finish together.  A VARLEN tile past its
        sequence's end visits 0 blocks.

        Windows are aligned bottom-right: row r sees keys r + seqlen_k - seqlen_q - window_left to
        r + seqlen_k - seqlen_q + window_right.  Blocks outside every row's window are skipped; at least
        one block is visited, so rows that see nothing come out of it masked (output 0, lse +inf)."""
        TILE_ROWS: gl.constexpr = a.q_smem.type.shape[0] * a.q_desc.block_type.shape[1]
        KEYS: gl.constexpr = a.k_desc.block_type.shape[1]
        if a.ACROSS_HEADS:
            batch_heads = a.num_tiles // a.num_m_blocks
            m_block = tile // batch_heads
            batch_head = tile % batch_heads
        else:
            m_block = tile % a.num_m_blocks
            batch_head = tile // a.num_m_blocks
        batch = batch_head // a.num_heads
        seq = _sequence(a, batch)
        _, _, _, seqlen_q, seqlen_k = seq
        key_shift = seqlen_k - seqlen_q
        end_block = gl.cdiv(seqlen_k, KEYS)
        if a.HAS_RIGHT:
            m_block = a.num_m_blocks - 1 - m_block
            last_key = gl.minimum((m_block + 1) * TILE_ROWS, seqlen_q) - 1 + key_shift + a.window_right
            end_block = gl.minimum(end_block, gl.cdiv(gl.maximum(last_key + 1, 0), KEYS))
        first_block = 0
        if a.HAS_LEFT:
            # Below seqlen_k: row r's window starts at most at r + seqlen_k - seqlen_q < seqlen_k.
            first_block = gl.maximum(m_block * TILE_ROWS + key_shift - a.window_left, 0) // KEYS
        n_blocks = gl.maximum(end_block - first_block, 1)
        if a.VARLEN:
            n_blocks = gl.where(m_block * TILE_ROWS < seqlen_q, n_blocks, 0)
        return seq, batch, batch_head % a.num_heads, m_block * TILE_ROWS, first_block, n_blocks

    @gluon.jit
    def _visited(a, j, first_block, n_blocks):
        """The key block a tile visits j-th: its blocks first_block to first_block + n_blocks - 1 in order, or with
        FROM_LAST in reverse."""
        if a.FROM_LAST:
            return first_block + n_blocks - 1 - j
        else:
            return first_block + j

    @gluon.jit
    def _producer(a):
        K_RING: gl.constexpr = a.k_smem.type.shape[0]
        V_RING: gl.constexpr = a.v_smem.type.shape[0]
        ROWS: gl.constexpr = a.q_desc.block_type.shape[1]
        HEAD_DIM: gl.constexpr = a.q_desc.block_type.shape[2]
        KEYS: gl.constexpr = a.k_desc.block_type.shape[1]
        CONSUMERS: gl.constexpr = a.q_smem.type.shape[0]
        block_count = 0  # key blocks loaded so far: ring slot and phase
        q_count = 0  # tiles with any block so far: Q's phase
        for i in range(_my_tile_count(a)):
            seq, batch, head, start_m, first_block, n_blocks = _tile(a, _tile_of(i))
            box_batch, q_start, k_start, _, _ = seq
            q_row = q_start + start_m
            k_row = k_start + first_block * KEYS
            v_key = k_row  # the block's first key in V's boxes
            if a.FP8 and a.VARLEN:
                v_key = gl.load(a.VStarts + batch) + first_block * KEYS
            q_col = head * HEAD_DIM
            kv_col = (head // a.group) * HEAD_DIM
            live = True  # a VARLEN tile past its sequence's end loads nothing
            if a.VARLEN:
                live = n_blocks > 0
            mbarrier.wait(a.q_empty, (q_count & 1) ^ 1, pred=live)
            mbarrier.expect(a.q_full, CONSUMERS * a.q_desc.block_type.nbytes, pred=live)
            for wg in gl.static_range(CONSUMERS):
                tma.async_copy_global_to_shared(a.q_desc, [box_batch, q_row + wg * ROWS, q_col], a.q_full,
                                                a.q_smem.index(wg), pred=live)
            for j in range(n_blocks):
                count = block_count + j
                slot = count % K_RING
                mbarrier.wait(a.k_empty.index(slot), ((count // K_RING) & 1) ^ 1)
                mbarrier.expect(a.k_full.index(slot), a.k_desc.block_type.nbytes)
                key = (_visited(a, j, first_block, n_blocks) - first_block) * KEYS
                tma.async_copy_global_to_shared(a.k_desc, [box_batch, k_row + key, kv_col],
                                                a.k_full.index(slot), a.k_smem.index(slot))
                slot = count % V_RING
                mbarrier.wait(a.v_empty.index(slot), ((count // V_RING) & 1) ^ 1)
                mbarrier.expect(a.v_full.index(slot), a.v_desc.block_type.nbytes)
                if a.FP8:  # keys innermost: (batch, kv heads * headdim, keys)
                    v_coord = [box_batch, kv_col, v_key + key]
                else:
                    v_coord = [box_batch, k_row + key, kv_col]
                tma.async_copy_global_to_shared(a.v_desc, v_coord, a.v_full.index(slot), a.v_smem.index(slot))
            block_count += n_blocks
            q_count += 1
            if a.VARLEN:
                q_count -= (n_blocks == 0).to(gl.int32)

    @gluon.jit
    def _masked(scores, first_key, key_lo, key_hi, seqlen_k, HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr):
        """Scores with -inf where row r's keys fall outside key_lo[r] to key_hi[r] (where HAS_LEFT / HAS_RIGHT bound
        its window) or past seqlen_k; the block's keys start at first_key."""
        layout: gl.constexpr = scores.type.layout
        # The block's key offsets (constants per register) against bounds per row, with the sequence's end folded into
        # the right one: fewer registers and operations than the keys' indices and a mask per bound (causal, three
        # consumers at D = 64: 48 bytes of spills instead of 512; windows, where a tile's first block and its diagonal
        # are masked, ran 1.03x (D = 128) to 1.05x (D = 64) this way, BENCHMARKS.md session 31).
        cols = gl.arange(0, scores.type.shape[1], layout=gl.SliceLayout(0, layout))
        if HAS_RIGHT:
            keep = cols[None, :] <= (gl.minimum(key_hi, seqlen_k - 1) - first_key)[:, None]
        else:
            keep = (cols < seqlen_k - first_key)[None, :]
        if HAS_LEFT:
            keep = keep & (cols[None, :] >= (key_lo - first_key)[:, None])
        return gl.where(keep, scores, float("-inf"))

    @gluon.jit
    def _online_softmax(scores, row_max, row_sum, qk_scale_log2, first_key, key_lo, key_hi, seqlen_k,
                        MASK: gl.constexpr, HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr):
        """Block probabilities (base 2, scale folded in: the scale is positive), the factor that rescales
        the output so far, and the new row max and sum.  Row r sees keys key_lo[r] to key_hi[r] (where
        HAS_LEFT / HAS_RIGHT bound its window)."""
        if MASK:
            scores = _masked(scores, first_key, key_lo, key_hi, seqlen_k, HAS_LEFT, HAS_RIGHT)
        new_max = gl.maximum(row_max, gl.max(scores, 1) * qk_scale_log2)
        # A row with nothing visible yet keeps its max at -inf; subtract 0 instead so exp2 gives 0, not NaN.
        reference = gl.where(new_max == float("-inf"), 0.0, new_max)
        probs = gl.exp2(scores * qk_scale_log2 - reference[:, None])
        alpha = gl.exp2(row_max - reference)
        row_sum = row_sum * alpha + gl.sum(probs, 1)
        return probs, alpha, new_max, row_sum

    @gluon.jit
    def _softmax_block(scores, row_max, row_sum, qk_scale_log2, j, full_lo, full_hi, key_lo, key_hi, seqlen_k,
                       HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr, MASK: gl.constexpr,
                       MASK_FIRST: gl.constexpr = False):
        """_online_softmax for key block j (of scores.shape[1] keys): masked if MASK, or with MASK None only outside
        blocks [full_lo, full_hi), where the sequence's end or a window edge crosses a block; then, with MASK_FIRST,
        the mask alone in a branch and one softmax body after it (see `mask_first`)."""
        KEYS: gl.constexpr = scores.type.shape[1]
        if MASK is not None:
            return _online_softmax(scores, row_max, row_sum, qk_scale_log2, j * KEYS, key_lo, key_hi, seqlen_k, MASK,
                                   HAS_LEFT, HAS_RIGHT)
        masked = j >= full_hi
        if HAS_LEFT:
            masked = masked | (j < full_lo)
        if MASK_FIRST:
            if masked:
                scores = _masked(scores, j * KEYS, key_lo, key_hi, seqlen_k, HAS_LEFT, HAS_RIGHT)
            return _online_softmax(scores, row_max, row_sum, qk_scale_log2, j * KEYS, key_lo, key_hi, seqlen_k, False,
                                   HAS_LEFT, HAS_RIGHT)
        if masked:
            return _online_softmax(scores, row_max, row_sum, qk_scale_log2, j * KEYS, key_lo, key_hi, seqlen_k, True,
                                   HAS_LEFT, HAS_RIGHT)
        else:
            return _online_softmax(scores, row_max, row_sum, qk_scale_log2, j * KEYS, key_lo, key_hi, seqlen_k, False,
                                   HAS_LEFT, HAS_RIGHT)

    @gluon.jit
    def _values(a, slot):
        """V's tile in ring slot `slot` as P V's (keys, headdim) operand; with FP8 a view of the keys-innermost tile
        (fp8 wgmma reads both operands with the reduction dim contiguous)."""
        HEAD_DIM: gl.constexpr = a.q_desc.block_type.shape[2]
        KEYS: gl.constexpr = a.k_desc.block_type.shape[1]
        if a.FP8:
            return a.v_smem.index(slot).reshape([HEAD_DIM, KEYS]).permute((1, 0))
        else:
            return a.v_smem.index(slot).reshape([KEYS, HEAD_DIM])

    @gluon.jit
    def _probabilities(a, probs, p_layout: gl.constexpr, WG: gl.constexpr):
        """P as P V's A operand: in registers, or with FP8 through the consumer's output tile.  An fp8 operand in
        registers costs ~200 integer instructions per thread and block (the conversion's bytes are split and
        joined again, BENCHMARKS.md session 21); stored to shared memory they stay packed."""
        if a.FP8:
            ROWS: gl.constexpr = probs.type.shape[0]
            KEYS: gl.constexpr = probs.type.shape[1]
            layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, KEYS], gl.float8e4nv)
            p_tile = a.o_smem.index(WG)._reinterpret(gl.float8e4nv, [ROWS, KEYS], layout)
            p_tile.store(probs.to(gl.float8e4nv))
            fence_async_shared()
            gl.thread_barrier()  # every thread's part is in before the warpgroup's matmul reads it
            return p_tile
        else:
            return gl.convert_layout(probs.to(a.q_desc.dtype), p_layout)

    @gluon.jit
    def _scaled_softmax_block(a, scores, qk_scale, row_max, row_sum, j, full_lo, full_hi, key_lo, key_hi, seqlen_k,
                              MASK: gl.constexpr):
        """_softmax_block with the scores' scale (base 2).  FP8's includes q's and k's descales, which may have either
        sign: folded into the row max where positive (one FFMA per score), else multiplied into the scores first."""
        if a.FP8:
            if qk_scale > 0:
                probs, alpha, row_max, row_sum = _softmax_block(scores, row_max, row_sum, qk_scale, j, full_lo,
                                                                full_hi, key_lo, key_hi, seqlen_k, a.HAS_LEFT,
                                                                a.HAS_RIGHT, MASK, a.MASK_FIRST)
            else:
                probs, alpha, row_max, row_sum = _softmax_block(scores * qk_scale, row_max, row_sum, 1.0, j, full_lo,
                                                                full_hi, key_lo, key_hi, seqlen_k, a.HAS_LEFT,
                                                                a.HAS_RIGHT, MASK, a.MASK_FIRST)
            return probs, alpha, row_max, row_sum
        else:
            return _softmax_block(scores, row_max, row_sum, qk_scale, j, full_lo, full_hi, key_lo, key_hi, seqlen_k,
                                  a.HAS_LEFT, a.HAS_RIGHT, MASK, a.MASK_FIRST)

    @gluon.jit
    def _key_block(a, WG: gl.constexpr, j, MASK: gl.constexpr, acc, alpha, row_max, row_sum, p_op, block_count,
                   n_blocks, first_block, full_lo, full_hi, qk_scale, key_lo, key_hi, seqlen_k):
        """The consumer's step for the j-th key block the tile visits (see `_visited`), masked if MASK (None: outside
        blocks [full_lo, full_hi), decided here, as _softmax_block): S_j = Q K_j^T and O += P_{j-1} V_{j-1} on the
        tensor cores, block j's softmax under the second.  Returns the carried state."""
        K_RING: gl.constexpr = a.k_smem.type.shape[0]
        V_RING: gl.constexpr = a.v_smem.type.shape[0]
        ROWS: gl.constexpr = a.q_desc.block_type.shape[1]
        HEAD_DIM: gl.constexpr = a.q_desc.block_type.shape[2]
        KEYS: gl.constexpr = a.k_desc.block_type.shape[1]
        MMA_K: gl.constexpr = 256 // a.q_desc.dtype.primitive_bitwidth
        s_layout: gl.constexpr = _acc_layout(KEYS, MMA_K)
        o_layout: gl.constexpr = _acc_layout(HEAD_DIM, MMA_K)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
        q_tile = a.q_smem.index(WG).reshape([ROWS, HEAD_DIM])
        count = block_count + j
        slot = count % K_RING
        mbarrier.wait(a.k_full.index(slot), (count // K_RING) & 1)
        scores = warpgroup_mma(q_tile, a.k_smem.index(slot).reshape([KEYS, HEAD_DIM]).permute((1, 0)),
                               gl.zeros([ROWS, KEYS], gl.float32, layout=s_layout), use_acc=False, is_async=True)
        acc = acc * gl.convert_layout(alpha, orow_layout)[:, None]
        v_slot = (count - 1) % V_RING
        mbarrier.wait(a.v_full.index(v_slot), ((count - 1) // V_RING) & 1)
        acc = warpgroup_mma(p_op, _values(a, v_slot), acc, is_async=True)
        scores = warpgroup_mma_wait(1, deps=(scores, ))
        mbarrier.arrive(a.k_empty.index(slot))
        if not a.O_IN_Q:
            mbarrier.arrive(a.q_empty, pred=j == n_blocks - 1)
        probs, alpha, row_max, row_sum = _scaled_softmax_block(a, scores, qk_scale, row_max, row_sum,
                                                               _visited(a, j, first_block, n_blocks), full_lo, full_hi,
                                                               key_lo, key_hi, seqlen_k, MASK)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
        mbarrier.arrive(a.v_empty.index(v_slot))
        p_op = _probabilities(a, probs, p_layout, WG)
        return acc, alpha, row_max, row_sum, p_op

    @gluon.jit
    def _key_blocks(a, WG: gl.constexpr, j_lo, j_hi, MASK: gl.constexpr, acc, alpha, row_max, row_sum, p_op,
                    block_count, n_blocks, first_block, full_lo, full_hi, qk_scale, key_lo, key_hi, seqlen_k):
        """_key_block for the key blocks the tile visits j_lo-th to (j_hi - 1)-th."""
        for j in range(j_lo, j_hi):
            acc, alpha, row_max, row_sum, p_op = _key_block(a, WG, j, MASK, acc, alpha, row_max, row_sum, p_op,
                                                            block_count, n_blocks, first_block, full_lo, full_hi,
                                                            qk_scale, key_lo, key_hi, seqlen_k)
        return acc, alpha, row_max, row_sum, p_op

    @gluon.jit
    def _consumer(a, WG: gl.constexpr):
        K_RING: gl.constexpr = a.k_smem.type.shape[0]
        V_RING: gl.constexpr = a.v_smem.type.shape[0]
        ROWS: gl.constexpr = a.q_desc.block_type.shape[1]
        HEAD_DIM: gl.constexpr = a.q_desc.block_type.shape[2]
        KEYS: gl.constexpr = a.k_desc.block_type.shape[1]
        MMA_K: gl.constexpr = 256 // a.q_desc.dtype.primitive_bitwidth  # a wgmma's reduction: 16, or 32 with FP8
        s_layout: gl.constexpr = _acc_layout(KEYS, MMA_K)
        o_layout: gl.constexpr = _acc_layout(HEAD_DIM, MMA_K)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
        orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
        q_tile = a.q_smem.index(WG).reshape([ROWS, HEAD_DIM])
        zero_scores = gl.zeros([ROWS, KEYS], gl.float32, layout=s_layout)
        block_count = 0  # key blocks used so far: ring slot and phase
        q_count = 0  # tiles with any block so far: Q's phase
        for i in range(_my_tile_count(a)):
            seq, batch, head, start_m, first_block, n_blocks = _tile(a, _tile_of(i))
            if not a.VARLEN or n_blocks > 0:  # a VARLEN tile past its sequence's end has no rows
                box_batch, q_start, _, seqlen_q, seqlen_k = seq
                qk_scale = a.qk_scale_log2
                if a.FP8:  # the descales of this tile's batch entry and kv head
                    descales = a.Descale + batch * (a.num_heads // a.group) + head // a.group
                    qk_scale = qk_scale * gl.load(descales) * gl.load(descales + a.descale_plane)
                    v_scale = gl.load(descales + 2 * a.descale_plane)
                    tma.store_wait(0)  # P goes through the output tile: the previous tile's box has read it
                key_shift = seqlen_k - seqlen_q
                first_row = start_m + WG * ROWS
                rows = first_row + gl.arange(0, ROWS, layout=row_layout)
                key_lo = rows + key_shift - a.window_left
                key_hi = rows + key_shift + a.window_right
                # Blocks in [full_lo, full_hi) need no mask for any of this warpgroup's rows.
                full_lo = 0
                full_hi = seqlen_k // KEYS
                if a.HAS_LEFT:
                    full_lo = gl.cdiv(gl.maximum(first_row + ROWS - 1 + key_shift - a.window_left, 0), KEYS)
                if a.HAS_RIGHT:
                    full_hi = gl.minimum(full_hi, gl.maximum(first_row + key_shift + a.window_right + 1, 0) // KEYS)
                acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
                row_max = gl.full([ROWS], float("-inf"), gl.float32, layout=row_layout)
                row_sum = gl.zeros([ROWS], gl.float32, layout=row_layout)

                mbarrier.wait(a.q_full, q_count & 1)
                # The first block visited, alone: its scores, then its softmax.
                slot = block_count % K_RING
                mbarrier.wait(a.k_full.index(slot), (block_count // K_RING) & 1)
                scores = warpgroup_mma(q_tile, a.k_smem.index(slot).reshape([KEYS, HEAD_DIM]).permute((1, 0)),
                                       zero_scores, use_acc=False, is_async=True)
                scores = warpgroup_mma_wait(0, deps=(scores, ))
                mbarrier.arrive(a.k_empty.index(slot))
                if not a.O_IN_Q:
                    mbarrier.arrive(a.q_empty, pred=n_blocks == 1)
                probs, alpha, row_max, row_sum = _scaled_softmax_block(a, scores, qk_scale, row_max, row_sum,
                                                                       _visited(a, 0, first_block, n_blocks), full_lo,
                                                                       full_hi, key_lo, key_hi, seqlen_k, None)
                p_op = _probabilities(a, probs, p_layout, WG)
                if HEAD_DIM == 256:
                    # Blocks 1 on in three runs (masked left edge, plain, masked right edge and sequence end), each
                    # run's mask decided once instead of per block: 1.04x-1.20x at D = 256; at D = 64 and 128
                    # 0.82x-1.02x, window (1024, 0) 0.84x (H200, BENCHMARKS.md session 24), so they keep one loop.
                    lo = 1
                    if a.HAS_LEFT:
                        lo = gl.minimum(gl.maximum(full_lo - first_block, 1), n_blocks)
                    hi = gl.minimum(gl.maximum(full_hi - first_block, lo), n_blocks)
                    if a.HAS_LEFT:
                        acc, alpha, row_max, row_sum, p_op = _key_blocks(
                            a, WG, 1, lo, True, acc, alpha, row_max, row_sum, p_op, block_count, n_blocks, first_block,
                            full_lo, full_hi, qk_scale, key_lo, key_hi, seqlen_k)
                    acc, alpha, row_max, row_sum, p_op = _key_blocks(
                        a, WG, lo, hi, False, acc, alpha, row_max, row_sum, p_op, block_count, n_blocks, first_block,
                        full_lo, full_hi, qk_scale, key_lo, key_hi, seqlen_k)
                    acc, alpha, row_max, row_sum, p_op = _key_blocks(
                        a, WG, hi, n_blocks, True, acc, alpha, row_max, row_sum, p_op, block_count, n_blocks,
                        first_block, full_lo, full_hi, qk_scale, key_lo, key_hi, seqlen_k)
                elif a.PLAIN_LOOP:  # no mask past the first block visited (see `_key_order`)
                    acc, alpha, row_max, row_sum, p_op = _key_blocks(
                        a, WG, 1, n_blocks, False, acc, alpha, row_max, row_sum, p_op, block_count, n_blocks,
                        first_block, full_lo, full_hi, qk_scale, key_lo, key_hi, seqlen_k)
                else:
                    acc, alpha, row_max, row_sum, p_op = _key_blocks(
                        a, WG, 1, n_blocks, None, acc, alpha, row_max, row_sum, p_op, block_count, n_blocks,
                        first_block, full_lo, full_hi, qk_scale, key_lo, key_hi, seqlen_k)
                # The last block's P V.
                count = block_count + n_blocks - 1
                acc = acc * gl.convert_layout(alpha, orow_layout)[:, None]
                v_slot = count % V_RING
                mbarrier.wait(a.v_full.index(v_slot), (count // V_RING) & 1)
                acc = warpgroup_mma(p_op, _values(a, v_slot), acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=(acc, ))
                mbarrier.arrive(a.v_empty.index(v_slot))

                # A row that saw no key (a window, or causal with seqlen_q > seqlen_k) gets output 0 and lse +inf.
                saw_nothing = row_sum == 0.0
                lse = gl.where(saw_nothing, float("inf"), (row_max + gl.log2(row_sum)) * 0.6931471805599453)
                inverse = 1.0 / row_sum
                if a.FP8:
                    inverse = inverse * v_scale
                scale = gl.convert_layout(gl.where(saw_nothing, 0.0, inverse), orow_layout)
                out = (acc * scale[:, None]).to(a.o_desc.dtype)
                # Out through shared memory and one TMA box (clipped at the tensor's end); the previous tile's box
                # must have left shared memory first.  A VARLEN box would also write the next sequence's rows:
                # a block that ends past its sequence is stored from registers instead, rows past the end left out.
                if not a.VARLEN or first_row + ROWS <= seqlen_q:
                    o_tile = a.o_smem.index(WG)
                    tma.store_wait(0)
                    o_tile.reshape([ROWS, HEAD_DIM]).store(out)
                    fence_async_shared()
                    tma.async_copy_shared_to_global(a.o_desc, [box_batch, q_start + first_row, head * HEAD_DIM], o_tile)
                else:
                    out_rows = first_row + gl.arange(0, ROWS, layout=orow_layout)
                    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
                    row_stride = a.num_heads * HEAD_DIM
                    base = a.Out + (q_start + first_row).to(gl.int64) * row_stride + head * HEAD_DIM
                    offsets = (out_rows - first_row)[:, None] * row_stride + cols[None, :]
                    gl.store(base + offsets, out, mask=(out_rows < seqlen_q)[:, None])
                if a.O_IN_Q:  # Q's tile is free once the box has read the output from it
                    tma.store_wait(0)
                    mbarrier.arrive(a.q_empty)
                gl.store(a.Lse + _row_stats(a, box_batch, head, q_start) + rows, lse, mask=rows < seqlen_q)
            block_count += n_blocks
            q_count += 1
            if a.VARLEN:
                q_count -= (n_blocks == 0).to(gl.int32)
        tma.store_wait(0)

    # Integer arguments equal to 1 would otherwise become constants, which the aggregate's typed fields refuse.
    @compiled.fast_launch
    @gluon.jit(do_not_specialize=["lse_head_stride", "num_heads", "group", "seqlen_q", "seqlen_k",
                                  "num_m_blocks", "num_tiles", "window_left", "window_right", "descale_plane"])
    def hopper_forward_kernel(q_desc, k_desc, v_desc, o_desc, Out, Lse, lse_head_stride, CuSeqlensQ, CuSeqlensK,
                              num_heads, group, seqlen_q, seqlen_k, num_m_blocks, num_tiles, qk_scale_log2,
                              window_left, window_right, Descale, descale_plane, VStarts, HAS_LEFT: gl.constexpr,
                              HAS_RIGHT: gl.constexpr,
                              K_RING: gl.constexpr, V_RING: gl.constexpr, CONSUMERS: gl.constexpr,
                              CONSUMER_REGS: gl.constexpr, ACROSS_HEADS: gl.constexpr, VARLEN: gl.constexpr,
                              O_IN_Q: gl.constexpr, FP8: gl.constexpr, FROM_LAST: gl.constexpr,
                              PLAIN_LOOP: gl.constexpr, MASK_FIRST: gl.constexpr):
        gl.static_assert(not PLAIN_LOOP or (FROM_LAST and not HAS_LEFT and not HAS_RIGHT),
                         "PLAIN_LOOP: only the first block visited may need a mask")
        q_smem = gl.allocate_shared_memory(q_desc.dtype, [CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [K_RING] + k_desc.block_type.shape, k_desc.layout)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [V_RING] + v_desc.block_type.shape, v_desc.layout)
        if O_IN_Q:
            o_smem = q_smem
        else:
            o_smem = gl.allocate_shared_memory(o_desc.dtype, [CONSUMERS] + o_desc.block_type.shape, o_desc.layout)
        q_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_full = gl.allocate_shared_memory(gl.int64, [K_RING, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [K_RING, 1], mbarrier.MBarrierLayout())
        v_full = gl.allocate_shared_memory(gl.int64, [V_RING, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [V_RING, 1], mbarrier.MBarrierLayout())
        # "full": the copy's transaction bytes complete it.  "empty": one arrival per consumer warpgroup
        # (an arrive is issued by one thread, after its warpgroup's collective wgmma wait).
        mbarrier.init(q_full, count=1)
        mbarrier.init(q_empty, count=CONSUMERS)
        for i in gl.static_range(K_RING):
            mbarrier.init(k_full.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=CONSUMERS)
        for i in gl.static_range(V_RING):
            mbarrier.init(v_full.index(i), count=1)
            mbarrier.init(v_empty.index(i), count=CONSUMERS)
        fence_async_shared()
        a = _Shared(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, o_desc, o_smem, q_full, q_empty, k_full, k_empty,
                    v_full, v_empty, Out, Lse, lse_head_stride, CuSeqlensQ, CuSeqlensK, num_heads,
                    group, seqlen_q, seqlen_k, num_m_blocks, num_tiles, qk_scale_log2, window_left, window_right,
                    Descale, descale_plane, VStarts, HAS_LEFT, HAS_RIGHT, ACROSS_HEADS, VARLEN, O_IN_Q, FP8, FROM_LAST,
                    PLAIN_LOOP, MASK_FIRST)
        if CONSUMERS == 3:
            gl.warp_specialize([(_producer, (a, )), (_consumer, (a, 0)), (_consumer, (a, 1)), (_consumer, (a, 2))],
                               [4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS])
        else:
            gl.warp_specialize([(_producer, (a, )), (_consumer, (a, 0)), (_consumer, (a, 1))], [4, 4],
                               [CONSUMER_REGS, CONSUMER_REGS])


@functools.lru_cache(maxsize=None)
def _box_layout(box: tuple, dtype: torch.dtype):
    element = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32,
               torch.float8_e4m3fn: gl.float8e4nv}[dtype]
    return gl.NVMMASharedLayout.get_default_for(list(box), element)


def sequences(q, k, lse, varlen) -> tuple:
    """(batch, seqlen_q, seqlen_k, cu_seqlens_q, cu_seqlens_k) of a call to either Hopper kernel: the longest
    lengths when variable-length; without cu_seqlens, any tensor as the (never read) pointers."""
    if varlen is None:
        return q.shape[0], q.shape[1], k.shape[1], lse, lse
    cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k = varlen
    return cu_seqlens_q.shape[0] - 1, max_seqlen_q, max_seqlen_k, cu_seqlens_q, cu_seqlens_k


def across_heads(num_m_blocks: int, window_left: int, window_right: int, varlen, programs: int) -> bool:
    """Whether the persistent programs take the tiles across heads (ACROSS_HEADS), heaviest first, rather than
    one head after another.  Only where tiles differ in work and a head has many blocks (more than a quarter
    of the programs' count); with few blocks per head, one head after another keeps its K and V in L2
    (0.99x against 0.83x of cuDNN at 1k, causal).  Measured on an H200:
    - causal: taken one head after another, a round of `programs` tiles spans every block size and the
      programs drift apart (0.86x of cuDNN at 16k);
    - a sliding window (both edges): its tiles are equal but for those the sequence's start clips, and one
      head after another puts those short tiles in every round (with 2048 tiles on 132 SMs the busiest
      program gets 1.065x the mean work, 1.005x across heads): window (1024, 0) 1.036x-1.053x, (256, 0)
      1.13x-1.15x at 16k tokens (BENCHMARKS.md, session 13).  The backward's tiles in this order ran
      0.96x-1.0x, so the backward keeps its own.
    A variable-length batch has many sequences and heads and keeps one head after another."""
    causal = window_left < 0 and window_right == 0
    window = window_left >= 0 and window_right >= 0
    return varlen is None and (causal or window) and 4 * num_m_blocks > programs


def consumer_count(head_dim: int, window_left: int, window_right: int, varlen, seqlen_q: int, seqlen_k: int) -> int:
    """Consumer warpgroups per tile, each owning 64 query rows.  Three (FlashAttention-3's 192-row tiles) for dense
    calls at D = 64 without a mask, and causal ones from CAUSAL_THREE_FROM tokens (the longer of Sq and Sk): at
    D = 64 a block's matmuls take half as long as at D = 128 and its softmax as long, and a third warpgroup's
    softmax fills the tensor cores' gaps.  Measured on an H200 (BENCHMARKS.md, session 18), forward alone: without
    a mask 1.03x-1.08x at 2k-16k; causal 1.05x-1.07x at 8k-16k, but 0.97x at 4k and 0.65x-0.68x at 1k (not for
    the spills, nor for the diagonal blocks a tile's first consumers compute without seeing them: skipping
    those changed nothing; why is not known).  Two elsewhere:
    - D = 128 needs more than the 160 registers per thread three consumers get;
    - windows: window (1024, 0) ran 0.68x-0.92x with three (other windows not measured);
    - variable-length batches waste more rows at each sequence's end with taller tiles (not measured);
    - where 192-row tiles would launch THREE_MAX_PADDING more rows than 128-row ones: the third consumer's gain
      (1.065x-1.075x where both tile heights divide Sq, at 1.5k and 3k) is lost to the rows past Sq.  At 1k
      (5 1/3 tiles of 192 rows, 12.5% more rows) three ran 0.948x of two; at 2k and 4k (3.1% more) 1.014x and
      1.039x (BENCHMARKS.md, session 20)."""
    if head_dim != 64 or varlen is not None or window_left >= 0:
        return 2
    if not (window_right < 0 or (window_right == 0 and max(seqlen_q, seqlen_k) >= CAUSAL_THREE_FROM)):
        return 2
    rows_in_threes, rows_in_twos = -(-seqlen_q // (3 * ROWS)) * 3 * ROWS, -(-seqlen_q // (2 * ROWS)) * 2 * ROWS
    return 3 if rows_in_threes <= THREE_MAX_PADDING * rows_in_twos else 2


def _key_order(head_dim: int, window_left: int, window_right: int, varlen, seqlen_k: int, consumers: int) -> dict:
    """The constexprs FROM_LAST and PLAIN_LOOP.  With FROM_LAST each tile visits its key blocks from the last, so the
    block that crosses the diagonal or the sequence's end is the first visited, which is computed alone (its mask
    decided there).  Without any window edge no other block needs a mask, and PLAIN_LOOP compiles the loop without
    the masked softmax.  Measured on three H200s against the blocks in order, forward alone (BENCHMARKS.md,
    session 27):
    - FROM_LAST, the loop with both softmax bodies: causal 1.03x-1.10x at 1k, 0.995x-1.02x from 2k; D = 256 0.98x-0.99x,
      so D = 256 keeps the order; window (1024, 0) 0.98x at D = 128 then, but once the window's masks compared key
      offsets (session 31), 1.012x-1.043x for windows at D = 128 and 1.005x at D = 64 (session 32: the first block,
      computed alone, is then the right edge, which only the diagonal crosses, rather than the left one);
    - PLAIN_LOOP without a mask: 1.05x-1.07x with three consumers (D = 64 from 2k) and in variable-length batches,
      1.02x-1.05x at D = 128 from 8k; but 0.95x-0.99x with two consumers at 1k-2k (PLAIN_LOOP_FROM; why is not
      known: the loop itself has fewer instructions);
    - causal tiles whose diagonal is their only masked block could take a plain loop too, chosen per tile: 0.97x-1.05x
      from one build to the next, so they keep the loop with both bodies."""
    from_last = head_dim != 256
    unmasked = window_left < 0 and window_right < 0
    plain = unmasked and (consumers == 3 or varlen is not None or seqlen_k >= PLAIN_LOOP_FROM)
    return dict(FROM_LAST=from_last, PLAIN_LOOP=from_last and plain)


def mask_first(head_dim: int, window_left: int) -> bool:
    """Whether a key block whose mask is decided at run time (MASK None in `_softmax_block`) is masked in a branch of
    its own and then takes the unmasked softmax (MASK_FIRST), rather than one of two whole softmax bodies.  The loop
    is then a third shorter (D = 64 causal, three consumers: 616 SASS instructions against 919), and at D = 64 the
    two-body loop's cost is its size, not its masks (session 28's profile, 16k: an iteration of the causal loop took
    8% longer than one of the unmasked call's loop, though under 3% of the causal blocks are masked).  Measured on an
    H200 against the two bodies, forward alone, in three calls (BENCHMARKS.md, session 28): D = 64 causal 1.02x-1.05x
    at 1k-8k and 1.01x-1.03x at 16k, 1.04x at 1k without a mask, 1.00x for window (1024, 0) and variable-length causal
    batches; D = 128 0.98x-1.00x, and 0.94x (twice) on a variable-length causal batch, so D = 128 keeps two bodies
    but for windows with a left edge of MASK_FIRST_WINDOW keys or more: their loop (FROM_LAST) has that edge as its
    only masked block, one of four or more.  Two calls (session 32), D = 128, 16k: window (1024, 0) 1.027x / 1.022x
    (1.018x with GQA), (512, 512) 1.024x / 1.022x, (4096, 0) 1.012x / 1.009x, but (256, 0) 0.985x / 0.978x, and
    (100, -1) and a variable-length (1024, 0) batch 0.999x."""
    return head_dim == 64 or (head_dim == 128 and window_left >= MASK_FIRST_WINDOW)


def o_in_q(head_dim: int) -> bool:
    """Whether the output leaves through the consumers' Q tiles (O_IN_Q) rather than tiles of its own: at D = 256,
    where Q's tiles (64 KB), two K and two V slots of 64 keys (128 KB) and the output's own tiles (64 KB) would
    not fit in shared memory.  The next tile's Q then loads only once this tile's output has left."""
    return head_dim == 256


def values_transposed(v: torch.Tensor, keys: int, cu_seqlens_k=None) -> tuple:
    """FP8's v: (B, Sk, Hk, D) copied keys-innermost as (B, Hk * D, Sk rounded up to 16 keys), and a descriptor
    of (1, D, keys) boxes over the copy.  A TMA box's innermost start must be 16-byte aligned, and its rows 16-byte
    multiples: so with cu_seqlens_k (v packed as (1, total, Hk, D)) each sequence starts at a multiple of 16 keys,
    at the int32 offsets returned third (else None).  Keys not copied are zeros: a box reads them as P V's keys
    past a sequence's end, whose probabilities are 0, and a NaN there would still spread.  Fourth: a dense copy's
    prepared launch (`transpose.prepared_keys_innermost`) or None."""
    batch, seqlen, heads, head_dim = v.shape
    starts = target = None
    if cu_seqlens_k is None:
        padded = -(-seqlen // 16) * 16
        vt = torch.empty(batch, heads * head_dim, padded, dtype=v.dtype, device=v.device)
    else:
        cu = cu_seqlens_k.long()
        starts = torch.nn.functional.pad(((cu[1:] - cu[:-1] + 15) // 16 * 16).cumsum(0), (1, 0))
        padded = -(-(seqlen + 15 * (cu.shape[0] - 1)) // 16) * 16  # at least starts[-1], known without reading it
        key = torch.arange(seqlen, device=v.device)
        sequence = torch.searchsorted(cu[1:], key, right=True)
        target = (starts[sequence] + key - cu[sequence]).to(torch.int32)
        vt = torch.zeros(1, heads * head_dim, padded, dtype=v.dtype, device=v.device)
        starts = starts.to(torch.int32)
    copy = None
    if cu_seqlens_k is None:
        copy = transpose.prepared_keys_innermost(v, vt)
    else:
        transpose.keys_innermost(v, vt, target)
    box = [1, head_dim, keys]
    shape, strides = [vt.shape[0], heads * head_dim, padded], [heads * head_dim * padded, padded, 1]
    return vt, TensorDescriptor(vt, shape, strides, box, _box_layout(tuple(box), v.dtype)), starts, copy


def forward(q, k, v, out, lse, softmax_scale: float, window_left: int, window_right: int, varlen=None,
            descale=None) -> None:
    """out = attention(q, k, v) and lse, for a call `unsupported_reason` accepted.  A window side of -1 is
    unbounded; causal is window_right = 0.  Dense: q, k, v, out (B, S, H, D), lse (B, H, Sq).  Variable
    length: varlen = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k), q, k, v, out the packed
    (1, total, H, D) tensors seen as one batch entry, lse (H, total_q).  FP8: q, k, v float8_e4m3fn, out
    bfloat16, descale float32 (3, B, Hk) contiguous (q's, k's and v's factors)."""
    plan_key = launch_plans.key((q, k, v, out, lse, descale, *(varlen or (None, None))[:2]), softmax_scale,
                                window_left, window_right, varlen and varlen[2:])
    prepared = _PLANS.get(plan_key)
    if prepared is not None:
        cu_seqlens_q, cu_seqlens_k = (lse, lse) if varlen is None else varlen[:2]
        if descale is None:
            prepared(q, k, v, out, out, lse, cu_seqlens_q, cu_seqlens_k, lse, lse)
        else:  # dense FP8: v's keys-innermost copy, then the kernel over it
            copy, copy_shape, kernel = prepared
            vt = torch.empty(copy_shape, dtype=v.dtype, device=v.device)
            copy(v.view(torch.uint8), vt.view(torch.uint8))
            kernel(q, k, vt, out, out, lse, lse, lse, descale, lse)
        return
    num_heads, head_dim = q.shape[2], q.shape[3]
    num_heads_kv = k.shape[2]
    batch, seqlen_q, seqlen_k, cu_seqlens_q, cu_seqlens_k = sequences(q, k, lse, varlen)
    consumers = consumer_count(head_dim, window_left, window_right, varlen, seqlen_q, seqlen_k)
    q_box, kv_box = (1, ROWS, head_dim), (1, BLOCK_N[head_dim], head_dim)
    q_desc, o_desc = descriptor(q, q_box), descriptor(out, q_box)
    k_desc = descriptor(k, kv_box)
    v_starts = copy = None  # FP8: each variable-length sequence's first key in v's copy; a dense copy's launch
    if descale is None:
        v_desc = descriptor(v, kv_box)
    else:
        v, v_desc, v_starts, copy = values_transposed(v, BLOCK_N[head_dim], None if varlen is None else varlen[1])
    num_m_blocks = -(-seqlen_q // (ROWS * consumers))
    num_tiles = num_m_blocks * batch * num_heads
    # Persistent: one program per SM, taking tiles in turn, so the producer loads the next tile's
    # Q, K and V while the consumers finish this one.  A variable-length batch's tiles differ in work
    # by sequence, which a fixed share of tiles per program cannot balance: one program per tile, in
    # the hardware's order (1.07x-1.14x over persistent on an H200, BENCHMARKS.md session 12).
    programs = num_tiles if varlen is not None else min(num_tiles, hardware.sm_count(q.device))
    args = (q_desc, k_desc, v_desc, o_desc, out, lse, lse.stride(0), cu_seqlens_q, cu_seqlens_k, num_heads,
            num_heads // num_heads_kv, seqlen_q, seqlen_k, num_m_blocks, num_tiles, softmax_scale * LOG2E,
            max(window_left, 0), max(window_right, 0), lse if descale is None else descale,
            0 if descale is None else descale.stride(0), lse if v_starts is None else v_starts)
    kwargs = dict(HAS_LEFT=window_left >= 0, HAS_RIGHT=window_right >= 0, K_RING=K_STAGES, V_RING=V_STAGES,
                  CONSUMERS=consumers, CONSUMER_REGS=CONSUMER_REGISTERS[consumers],
                  ACROSS_HEADS=across_heads(num_m_blocks, window_left, window_right, varlen, programs),
                  VARLEN=varlen is not None, O_IN_Q=o_in_q(head_dim), FP8=descale is not None,
                  MASK_FIRST=mask_first(head_dim, window_left), num_warps=4,
                  **_key_order(head_dim, window_left, window_right, varlen, seqlen_k, consumers))
    if descale is not None and varlen is not None:
        hopper_forward_kernel[(programs, )](*args, **kwargs)
        return
    # The call again for the plan's later calls: the tensors (the descriptors' bases among them) vary.
    kernel = hopper_forward_kernel.prepare((programs, ), args, kwargs, varying=(0, 1, 2, 3, 4, 5, 7, 8, 18, 20))
    if descale is None:
        launch_plans.remember(_PLANS, plan_key, kernel)
    elif copy is not None and kernel is not None:
        launch_plans.remember(_PLANS, plan_key, (copy, v.shape, kernel))
