"""Paged decoding on Hopper (sm_90), in Gluon: the KV cache's pages streamed by the TMA engine.

A decoding step reads every key and value of the cache once for a few query rows, so its speed is the
rate at which the cache leaves memory.  In the portable kernel (forward.py with PACK_GQA) a paged tile
gathers its rows key by key through the block table, with row addresses computed by the warps that also
do the math.  Here the two jobs are split (warp specialisation):

- A producer warp only issues copies.  A key tile of BLOCK_N keys is BLOCK_N / R boxes of (R rows,
  64 columns) per 64 columns of the head dim, R = min(page_size, BLOCK_N): one box per page (or per
  BLOCK_N rows of a larger page).  It reads the page numbers of LOOKUP_TILES tiles in one load, one
  lookup ahead of the copies.  Tiles go into a ring of STAGES shared-memory slots per K and V ("full":
  the copies' bytes; "empty": the consumer's arrival), each refilled as soon as it frees.
- A consumer warpgroup holds the (query, head) rows of its kv head as a 64-row wgmma tile (see
  pack_gqa: row r is query r // group of head kv_head * group + r % group).  Per tile j it issues
  S_j = Q K_j^T and O += P_{j-1} V_{j-1}, and runs tile j's online softmax under the second.
- Split-KV: num_splits programs share one (batch, kv head)'s tiles and write float32 partials with
  their log-sum-exp, which `combine.combine_splits_kernel` merges.

The copy engine reads whole boxes, so key rows at or past a sequence's length hold whatever the cache
holds there (a page's unused rows; a box past the last page re-reads the last page).  Their scores are
masked, and the consumer zeroes their value rows in shared memory before P V, so stale values (NaN
included) never reach the output.

Scope (`unsupported_reason`): paged caches with a power-of-two page size of at least 8, fp16/bf16, head
dim 64, 128 or 256, at most 64 (query, head) rows per kv head, causal or not.  Contiguous caches keep
forward.py, which reads them as fast (BENCHMARKS.md, session 9); so does everything else, and every
other device.  Checked on the GPU against the float64 oracle (Gluon has no interpreter).
"""

import functools
from typing import Optional

import torch

from flashtron.kernels import compiled, hardware, hopper_forward, launch_plans
from flashtron.kernels.hopper_forward import _GLUON, LOG2E, _box, descriptor

if _GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.language.core import _aggregate as aggregate

_DISABLED = False  # A/B switch for experiments and tests; FLASHTRON_GLUON=0 turns off every Hopper kernel
ROWS = 64  # the wgmma tile's rows: (query, head) pairs of one kv head, padded
HEAD_DIMS = (64, 128, 256)
BLOCK_N = 64  # keys per tile
# The K and V ring's shared memory (BENCHMARKS.md, session 16).  Head dims up to 128 cap each thread at
# PAIR_REGISTERS, so that two programs fit an SM's registers (2 x 256 threads x 128), and their ring at
# PAIR_RING_BYTES (three 64-key slots at head dim 128), so that two fit its shared memory: one program's start
# and end then run beside another's loop.  A grid of at least two programs per SM takes MANY_RING_BYTES, which
# keeps fewer bytes in flight per program and lets the programs finish closer together.  Head dim 256 needs
# more registers: one program per SM, with a ring of SOLO_RING_BYTES.
PAIR_REGISTERS = 128
PAIR_RING_BYTES = 96 * 1024
MANY_RING_BYTES = 64 * 1024
SOLO_RING_BYTES = 128 * 1024
MAX_STAGES = 8
_PLANS = launch_plans.table()  # launch_plans.key -> the prepared launch of `decode`
PRODUCER_REGISTERS = 48
LOOKUP_TILES = 16  # tiles whose page numbers the producer reads in one load
MIN_PAGE_SIZE = 8  # a box's rows must cover whole 8-row swizzle atoms (1 KB)


def _launch_shape(head_dim: int, element_size: int, programs: int, sm_count: int) -> tuple:
    """(ring slots, each one K and one V tile; registers per thread or None) of a grid of `programs`."""
    if head_dim > 128:
        ring, registers = SOLO_RING_BYTES, None
    else:
        ring, registers = (MANY_RING_BYTES if programs >= 2 * sm_count else PAIR_RING_BYTES), PAIR_REGISTERS
    return max(2, min(MAX_STAGES, ring // (2 * BLOCK_N * head_dim * element_size))), registers


def unsupported_reason(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
                       block_table) -> Optional[str]:
    """None when this kernel computes a packed-GQA decoding call (dense q (batch, seqlen_q, heads,
    headdim), keys and values from a paged cache with seqused_k), else why forward.py does."""
    if not _GLUON or _DISABLED or hopper_forward._DISABLED:
        return "Gluon unavailable or disabled"
    if hardware.capability(q.device) != (9, 0):
        return "not an sm_90 GPU"
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in HEAD_DIMS:
        return f"dtype {q.dtype} or head dim {q.shape[-1]} (needs fp16/bf16, head dim in {HEAD_DIMS})"
    if window_left >= 0 or window_right > 0:
        return "sliding window"
    if block_table is None:
        return "a contiguous cache (forward.py reads one as fast: BENCHMARKS.md, session 9)"
    if softcap > 0 or alibi_slopes is not None or sinks is not None:
        return "softcap, ALiBi or sinks"
    if not softmax_scale > 0:
        return "a non-positive softmax_scale"
    if k.shape[0] == 0 or k.shape[1] == 0 or block_table.shape[1] == 0:
        return "an empty cache or block table"
    group = q.shape[2] // k.shape[2]
    if group * q.shape[1] > ROWS:
        return f"more than {ROWS} (query, head) rows per kv head"
    page_size = k.shape[1]
    if page_size < MIN_PAGE_SIZE or page_size & (page_size - 1):
        return f"page size {page_size} (needs a power of two >= {MIN_PAGE_SIZE})"
    if _box(k) is None or _box(v) is None:
        return "cache strides do not allow TMA boxes"
    return None


if _GLUON:
    _LN2 = gl.constexpr(0.6931471805599453)
    _ROWS = gl.constexpr(ROWS)
    _LOOKUP_TILES = gl.constexpr(LOOKUP_TILES)

    @aggregate
    class _Shared:
        """What both partitions of one CTA see."""
        k_desc: tma.tensor_descriptor  # boxes (1, R rows, 64 columns) of (pages or batch, rows, Hk * headdim)
        v_desc: tma.tensor_descriptor
        k_smem: gl.shared_memory_descriptor  # (STAGES, 1, BLOCK_N, headdim)
        v_smem: gl.shared_memory_descriptor
        k_full: gl.shared_memory_descriptor
        k_empty: gl.shared_memory_descriptor
        v_full: gl.shared_memory_descriptor
        v_empty: gl.shared_memory_descriptor
        Q: gl.tensor
        stride_qb: gl.tensor
        stride_qm: gl.tensor
        stride_qh: gl.tensor
        Out: gl.tensor
        stride_ob: gl.tensor
        stride_om: gl.tensor
        stride_oh: gl.tensor
        stride_o_split: gl.tensor
        Lse: gl.tensor
        stride_lse_b: gl.tensor
        stride_lse_h: gl.tensor
        stride_lse_split: gl.tensor
        SeqUsedK: gl.tensor
        BlockTable: gl.tensor
        stride_block_table: gl.tensor
        log2_page: gl.tensor
        num_heads_kv: gl.tensor
        group: gl.tensor
        seqlen_q: gl.tensor
        num_splits: gl.tensor
        qk_scale_log2: gl.tensor
        HEAD_DIM: gl.constexpr
        CAUSAL: gl.constexpr
        SPLIT: gl.constexpr

        @gluon.constexpr_function
        def __init__(self, k_desc, v_desc, k_smem, v_smem, k_full, k_empty, v_full, v_empty, Q, stride_qb,
                     stride_qm, stride_qh, Out, stride_ob, stride_om, stride_oh, stride_o_split, Lse, stride_lse_b,
                     stride_lse_h, stride_lse_split, SeqUsedK, BlockTable, stride_block_table,
                     log2_page, num_heads_kv, group, seqlen_q, num_splits, qk_scale_log2, HEAD_DIM, CAUSAL, SPLIT):
            self.k_desc = k_desc
            self.v_desc = v_desc
            self.k_smem = k_smem
            self.v_smem = v_smem
            self.k_full = k_full
            self.k_empty = k_empty
            self.v_full = v_full
            self.v_empty = v_empty
            self.Q = Q
            self.stride_qb = stride_qb
            self.stride_qm = stride_qm
            self.stride_qh = stride_qh
            self.Out = Out
            self.stride_ob = stride_ob
            self.stride_om = stride_om
            self.stride_oh = stride_oh
            self.stride_o_split = stride_o_split
            self.Lse = Lse
            self.stride_lse_b = stride_lse_b
            self.stride_lse_h = stride_lse_h
            self.stride_lse_split = stride_lse_split
            self.SeqUsedK = SeqUsedK
            self.BlockTable = BlockTable
            self.stride_block_table = stride_block_table
            self.log2_page = log2_page
            self.num_heads_kv = num_heads_kv
            self.group = group
            self.seqlen_q = seqlen_q
            self.num_splits = num_splits
            self.qk_scale_log2 = qk_scale_log2
            self.HEAD_DIM = gl.constexpr(HEAD_DIM)
            self.CAUSAL = gl.constexpr(CAUSAL)
            self.SPLIT = gl.constexpr(SPLIT)

    @gluon.jit
    def _work(a):
        """(batch, kv head, split, keys in the sequence, first tile, tile count) of this program.  Split s
        takes tiles [s * n // S, (s + 1) * n // S) of the sequence's n: shares differ by at most one."""
        KEYS: gl.constexpr = a.k_smem.type.shape[2]
        pid = gl.program_id(0)
        split = pid % a.num_splits
        batch_head = pid // a.num_splits
        batch = batch_head // a.num_heads_kv
        head_kv = batch_head % a.num_heads_kv
        seqlen_k = gl.load(a.SeqUsedK + batch)
        tiles = gl.cdiv(seqlen_k, KEYS)
        first = split * tiles // a.num_splits
        count = (split + 1) * tiles // a.num_splits - first
        return batch, head_kv, split, seqlen_k, first, count

    @gluon.jit
    def _box_pages(a, table, start, last_page, lanes, R: gl.constexpr):
        """Page numbers of consecutive boxes from key `start` on (box e holds keys start + e * R ..); boxes past
        the sequence's last page repeat it (their rows are masked)."""
        index = gl.minimum((start + lanes * R) >> a.log2_page, last_page)
        return gl.load(table + index)

    @gluon.jit
    def _issue_tile(a, desc, boxes, empty, full, slot, phase, pages, lanes, tile_in_lookup, start, page_mask, col):
        """Wait for a ring slot to free, then copy the tile of keys start.. into it, box by box."""
        KEYS: gl.constexpr = a.k_smem.type.shape[2]
        R: gl.constexpr = desc.block_type.shape[1]
        COLUMNS: gl.constexpr = desc.block_type.shape[2]
        BOXES: gl.constexpr = KEYS // R
        CHUNKS: gl.constexpr = a.HEAD_DIM // COLUMNS
        mbarrier.wait(empty, phase)
        mbarrier.expect(full, BOXES * CHUNKS * desc.block_type.nbytes)
        for i in gl.static_range(BOXES):
            page = gl.sum(gl.where(lanes == tile_in_lookup * BOXES + i, pages, 0), 0)
            row = (start + i * R) & page_mask
            for c in gl.static_range(CHUNKS):
                tma.async_copy_global_to_shared(desc, [page, row, col + c * COLUMNS], full,
                                                boxes.index((slot * CHUNKS + c) * BOXES + i))

    @gluon.jit
    def _producer(a):
        KEYS: gl.constexpr = a.k_smem.type.shape[2]
        STAGES: gl.constexpr = a.k_smem.type.shape[0]
        R: gl.constexpr = a.k_desc.block_type.shape[1]
        COLUMNS: gl.constexpr = a.k_desc.block_type.shape[2]
        BOXES: gl.constexpr = KEYS // R
        CHUNKS: gl.constexpr = a.HEAD_DIM // COLUMNS
        dtype: gl.constexpr = a.k_desc.dtype
        # The ring's slots seen as boxes: a (1, KEYS, headdim) tile under the 128-byte swizzle is stored as
        # CHUNKS column chunks of (KEYS, 64), each KEYS // R boxes of R rows.
        k_boxes = a.k_smem._reinterpret(dtype, [STAGES * CHUNKS * BOXES, 1, R, COLUMNS], a.k_desc.layout)
        v_boxes = a.v_smem._reinterpret(dtype, [STAGES * CHUNKS * BOXES, 1, R, COLUMNS], a.v_desc.layout)
        batch, head_kv, split, seqlen_k, first, count = _work(a)
        col = head_kv * a.HEAD_DIM
        # Page numbers are read LOOKUP_TILES tiles at a time, one lookup ahead of the copies that use them.
        lanes = gl.arange(0, _LOOKUP_TILES * BOXES, layout=gl.BlockedLayout([1], [32], [1], [0]))
        table = a.BlockTable + batch.to(gl.int64) * a.stride_block_table
        last_page = gl.maximum(seqlen_k - 1, 0) >> a.log2_page
        page_mask = (1 << a.log2_page) - 1
        pages = lanes
        next_pages = _box_pages(a, table, first * KEYS, last_page, lanes, R)
        for j in range(count):
            start = (first + j) * KEYS
            if j % _LOOKUP_TILES == 0:
                pages = next_pages
                next_pages = _box_pages(a, table, start + _LOOKUP_TILES * KEYS, last_page, lanes, R)
            slot = j % STAGES
            phase = ((j // STAGES) & 1) ^ 1
            # K and V slots free at different times (K after S, V after P V): each is refilled when it frees.
            _issue_tile(a, a.k_desc, k_boxes, a.k_empty.index(slot), a.k_full.index(slot), slot, phase, pages,
                        lanes, j % _LOOKUP_TILES, start, page_mask, col)
            _issue_tile(a, a.v_desc, v_boxes, a.v_empty.index(slot), a.v_full.index(slot), slot, phase, pages,
                        lanes, j % _LOOKUP_TILES, start, page_mask, col)

    @gluon.jit
    def _zero_rows_from(tile, valid):
        """Rows valid.. of a (keys, headdim) shared-memory tile set to 0, visible to the next wgmma."""
        KEYS: gl.constexpr = tile.type.shape[0]
        layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        values = tile.load(layout)
        keys = gl.arange(0, KEYS, layout=gl.SliceLayout(1, layout))
        values = gl.where((keys < valid)[:, None], values, gl.zeros_like(values))
        tile.store(values)
        fence_async_shared()
        gl.thread_barrier()

    @gluon.jit
    def _tile(ring, slot):
        """Ring slot `slot` as a (keys, headdim) tile."""
        return ring.index(slot).reshape([ring.type.shape[2], ring.type.shape[3]])

    @gluon.jit
    def _consumer(a):
        KEYS: gl.constexpr = a.k_smem.type.shape[2]
        STAGES: gl.constexpr = a.k_smem.type.shape[0]
        HEAD_DIM: gl.constexpr = a.HEAD_DIM
        dtype: gl.constexpr = a.k_desc.dtype
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, KEYS, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        q_op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
        orow_layout: gl.constexpr = gl.SliceLayout(1, o_layout)
        load_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        ROWS: gl.constexpr = _ROWS
        batch, head_kv, split, seqlen_k, first, count = _work(a)
        rows_used = a.group * a.seqlen_q

        # Q: row r is query r // group of head head_kv * group + r % group; padding rows read as 0.
        r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, load_layout))
        d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, load_layout))
        q_rows = (batch.to(gl.int64) * a.stride_qb + (r // a.group).to(gl.int64) * a.stride_qm
                  + (head_kv * a.group + r % a.group).to(gl.int64) * a.stride_qh)
        q = gl.load(a.Q + q_rows[:, None] + d[None, :], mask=(r < rows_used)[:, None], other=0.0)
        q_op = gl.convert_layout(q, q_op_layout)

        rows = gl.arange(0, ROWS, layout=row_layout)
        # Causal is aligned bottom-right: query t sees keys up to seqlen_k - seqlen_q + t.
        key_limit = seqlen_k - a.seqlen_q + rows // a.group
        full_tiles = seqlen_k // KEYS  # tiles no row needs masked
        if a.CAUSAL:
            full_tiles = gl.maximum(seqlen_k - a.seqlen_q + 1, 0) // KEYS
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
        row_max = gl.full([ROWS], float("-inf"), gl.float32, layout=row_layout)
        row_sum = gl.zeros([ROWS], gl.float32, layout=row_layout)
        zero_scores = gl.zeros([ROWS, KEYS], gl.float32, layout=s_layout)
        if count > 0:
            # Tile 0's scores alone; then per tile j, S_j = Q K_j^T and O += P_{j-1} V_{j-1} on the tensor
            # cores, with tile j's softmax under the second (as in hopper_forward).
            mbarrier.wait(a.k_full.index(0), 0)
            scores = warpgroup_mma(q_op, _tile(a.k_smem, 0).permute((1, 0)), zero_scores, use_acc=False,
                                   is_async=True)
            scores = warpgroup_mma_wait(0, deps=(scores, ))
            mbarrier.arrive(a.k_empty.index(0))
            probs, alpha, row_max, row_sum = hopper_forward._softmax_block(
                scores, row_max, row_sum, a.qk_scale_log2, first, 0, full_tiles, key_limit, key_limit, seqlen_k,
                False, a.CAUSAL, None)
            for j in range(1, count):
                k_slot = j % STAGES
                mbarrier.wait(a.k_full.index(k_slot), (j // STAGES) & 1)
                scores = warpgroup_mma(q_op, _tile(a.k_smem, k_slot).permute((1, 0)), zero_scores, use_acc=False,
                                       is_async=True)
                acc = acc * gl.convert_layout(alpha, orow_layout)[:, None]
                p_op = gl.convert_layout(probs.to(dtype), p_layout)
                v_slot = (j - 1) % STAGES
                mbarrier.wait(a.v_full.index(v_slot), ((j - 1) // STAGES) & 1)
                # (Only a sequence's last tile holds rows past its end, and that tile is never j - 1 here.)
                acc = warpgroup_mma(p_op, _tile(a.v_smem, v_slot), acc, is_async=True)
                scores = warpgroup_mma_wait(1, deps=(scores, ))
                mbarrier.arrive(a.k_empty.index(k_slot))
                probs, alpha, row_max, row_sum = hopper_forward._softmax_block(
                    scores, row_max, row_sum, a.qk_scale_log2, first + j, 0, full_tiles, key_limit, key_limit,
                    seqlen_k, False, a.CAUSAL, None)
                acc = warpgroup_mma_wait(0, deps=(acc, ))
                mbarrier.arrive(a.v_empty.index(v_slot))
            # The last tile's P V; its value rows past the sequence's end are zeroed first.
            last = count - 1
            acc = acc * gl.convert_layout(alpha, orow_layout)[:, None]
            p_op = gl.convert_layout(probs.to(dtype), p_layout)
            v_slot = last % STAGES
            mbarrier.wait(a.v_full.index(v_slot), (last // STAGES) & 1)
            v_tile = _tile(a.v_smem, v_slot)
            if (first + count) * KEYS > seqlen_k:
                _zero_rows_from(v_tile, seqlen_k - (first + last) * KEYS)
            acc = warpgroup_mma(p_op, v_tile, acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=(acc, ))
            mbarrier.arrive(a.v_empty.index(v_slot))

        # A row that saw no key gets output 0 and lse +inf (a split's partial then weighs nothing).
        saw_nothing = row_sum == 0.0
        lse = gl.where(saw_nothing, float("inf"), (row_max + gl.log2(row_sum)) * _LN2)
        scale = gl.convert_layout(gl.where(saw_nothing, 0.0, 1.0 / row_sum), orow_layout)
        out = acc * scale[:, None]
        o_r = gl.arange(0, ROWS, layout=orow_layout)
        o_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        o_rows = (split.to(gl.int64) * a.stride_o_split + batch.to(gl.int64) * a.stride_ob
                  + (o_r // a.group).to(gl.int64) * a.stride_om + (head_kv * a.group + o_r % a.group).to(gl.int64)
                  * a.stride_oh)
        o_ptrs = a.Out + o_rows[:, None] + o_d[None, :]
        if a.SPLIT:
            gl.store(o_ptrs, out, mask=(o_r < rows_used)[:, None])  # float32 partials
        else:
            gl.store(o_ptrs, out.to(dtype), mask=(o_r < rows_used)[:, None])
        lse_ptrs = (a.Lse + split.to(gl.int64) * a.stride_lse_split + batch.to(gl.int64) * a.stride_lse_b
                    + (head_kv * a.group + rows % a.group).to(gl.int64) * a.stride_lse_h + rows // a.group)
        gl.store(lse_ptrs, lse, mask=rows < rows_used)

    # Integer arguments equal to 1 would otherwise become constants, which the aggregate's typed fields refuse.
    @compiled.fast_launch
    @gluon.jit(do_not_specialize=["stride_qb", "stride_qm", "stride_qh", "stride_ob", "stride_om", "stride_oh",
                                  "stride_o_split", "stride_lse_b", "stride_lse_h", "stride_lse_split",
                                  "stride_block_table", "log2_page", "num_heads_kv", "group", "seqlen_q",
                                  "num_splits"])
    def hopper_decode_kernel(k_desc, v_desc, Q, stride_qb, stride_qm, stride_qh, Out, stride_ob, stride_om, stride_oh,
                             stride_o_split, Lse, stride_lse_b, stride_lse_h, stride_lse_split, SeqUsedK, BlockTable, stride_block_table, log2_page, num_heads_kv, group, seqlen_q,
                             num_splits, qk_scale_log2, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                             TILE_LAYOUT: gl.constexpr, CAUSAL: gl.constexpr, SPLIT: gl.constexpr, PRODUCER_REGS: gl.constexpr):
        k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, 1, BLOCK_N, HEAD_DIM], TILE_LAYOUT)
        v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, 1, BLOCK_N, HEAD_DIM], TILE_LAYOUT)
        k_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(k_full.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=1)
            mbarrier.init(v_full.index(i), count=1)
            mbarrier.init(v_empty.index(i), count=1)
        fence_async_shared()
        a = _Shared(k_desc, v_desc, k_smem, v_smem, k_full, k_empty, v_full, v_empty, Q, stride_qb, stride_qm,
                    stride_qh, Out, stride_ob, stride_om, stride_oh, stride_o_split, Lse, stride_lse_b, stride_lse_h,
                    stride_lse_split, SeqUsedK, BlockTable, stride_block_table, log2_page, num_heads_kv, group,
                    seqlen_q, num_splits, qk_scale_log2, HEAD_DIM, CAUSAL, SPLIT)
        gl.warp_specialize([(_consumer, (a, )), (_producer, (a, ))], [1], [PRODUCER_REGS])


@functools.lru_cache(maxsize=None)
def _swizzled(dtype: torch.dtype):
    """The 128-byte-swizzled shared layout that both a (1, BLOCK_N, headdim) tile and its (1, R, 64) boxes use."""
    element = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[dtype]
    return gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=element.primitive_bitwidth, rank=3)


def decode(q, k, v, out, lse, seqused_k, block_table, softmax_scale: float, causal: bool, splits: int) -> None:
    """Attention of q (batch, seqlen_q, H, D) against the paged cache k, v (pages, page_size, Hk, D), for a call
    `unsupported_reason` accepted.  splits == 1: out (batch, seqlen_q, H, D) and lse (batch, H, seqlen_q).
    splits > 1: out and lse are float32 workspaces (splits, ...) of those shapes, for combine_splits_kernel."""
    plan_key = launch_plans.key((q, k, v, out, lse, seqused_k, block_table), softmax_scale, causal, splits)
    prepared = _PLANS.get(plan_key)
    if prepared is not None:
        prepared(k, v, q, out, lse, seqused_k, block_table)
        return
    batch, seqlen_q, num_heads, head_dim = q.shape
    page_size, num_heads_kv = k.shape[1], k.shape[2]
    layout = _swizzled(q.dtype)
    box = (1, min(page_size, BLOCK_N), 64)
    k_desc, v_desc = descriptor(k, box, layout), descriptor(v, box, layout)
    split_strides = (out.stride(0), lse.stride(0)) if splits > 1 else (0, 0)
    programs = splits * batch * num_heads_kv
    stages, registers = _launch_shape(head_dim, q.element_size(), programs, hardware.sm_count(q.device))
    options = {} if registers is None else {"maxnreg": registers}
    args = (k_desc, v_desc, q, *q.stride()[:3], out, *out.stride()[-4:-1], split_strides[0], lse, *lse.stride()[-3:-1],
            split_strides[1], seqused_k, block_table, block_table.stride(0), page_size.bit_length() - 1, num_heads_kv,
            num_heads // num_heads_kv, seqlen_q, splits, softmax_scale * LOG2E)
    kwargs = dict(HEAD_DIM=head_dim, BLOCK_N=BLOCK_N, STAGES=stages, TILE_LAYOUT=layout, CAUSAL=causal,
                  SPLIT=splits > 1, PRODUCER_REGS=PRODUCER_REGISTERS, num_warps=4, **options)
    # The call again for the plan's later calls: the tensors (the descriptors' bases among them) vary.
    launch_plans.remember(_PLANS, plan_key, hopper_decode_kernel.prepare((programs, ), args, kwargs,
                                                                         varying=(0, 1, 2, 6, 11, 15, 16)))
