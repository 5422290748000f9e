"""The backward on Hopper (sm_90), in Gluon: dK, dV and dQ in one pass over the key blocks.

backward.py recomputes the probabilities twice (once for dK/dV, once for dQ: 7 matmuls per block
pair) so that it needs no atomics.  This kernel does FlashAttention-2/3's 5 matmuls: each program owns
128 keys, loops over the query blocks that see them, and adds its share of dQ into a float32 buffer
with TMA reduce-adds.

- The producer partition (one warpgroup, 24 registers) copies K and V once, then Q and dO block by
  block into a ring of 2 (D = 128) or 4 (D = 64) slots ("full": the copy's bytes; "empty": one arrival per
  consumer), with each block's lse and delta (cp.async: the consumers read them from shared memory instead
  of waiting on global loads at every step).  In the persistent build it also takes the program's next tile
  from a counter and hands its number to the consumers through shared memory.
- Two consumer partitions (one warpgroup each, 240 registers) own 64 of the program's keys.  Per query
  block of 64 rows a consumer issues S = Q K^T and dP = dO V^T, forms P = exp2(S * scale - lse) and
  dS = P * (dP - delta), writes P and dS (16-bit) to shared memory and issues dV += P^T dO and
  dK += dS^T Q.  At D = 128 dQ is split by columns, as in FlashAttention-3: once both consumers' dS are in
  shared memory (one mbarrier per step; dS is double-buffered), each computes dQ_part = dS K for its half of
  the head dim over all 128 keys, and sends it out through shared memory and one TMA reduce-add
  (float32, summed in L2) while the next block's S and dP run.  Against each consumer reducing a
  (64, headdim) part over its own 64 keys, that halves the reduce traffic and the dQ accumulator.  At D = 64
  the accumulator is small either way, and each consumer reduces its own keys' part (`DQ_BY_KEYS`), so the
  consumers need not meet every step.
- dK and dV go out at a tile's end through shared memory and TMA boxes (in the persistent build, with K and V already
  released, so that the next tile's copy runs under them).  Before the kernel, the delta pass
  (backward.attention_backward_preprocess) computes rowsum(dO * O) and zeroes the dQ sums; after it, dQ is
  scaled and rounded to the input dtype (backward.attention_backward_postprocess).  The float32 sums make dQ's
  last bits depend on the order the reduce-adds land in: `deterministic=True` takes backward.py.

Like hopper_forward, it covers dense and variable-length (VARLEN, packed as in hopper_forward) fp16/bf16 calls
at head dims 64 and 128 (from the lengths in `MIN_SEQLEN`), causal, windowed or neither, GQA/MQA, any Sq and Sk;
everything else takes backward.py.  It is checked on the GPU against backward.py and the float64 oracle (Gluon
has no interpreter).
"""

import torch
import triton

from flashtron.kernels import compiled, hardware, hopper_forward, launch_plans
from flashtron.kernels.backward import (PREPROCESS_ROWS, attention_backward_postprocess,
                                        attention_backward_preprocess)
from flashtron.kernels.hopper_forward import _GLUON, LOG2E, _box, descriptor

if _GLUON:
    from flashtron.kernels.hopper_forward import _acc_layout, _row_stats, _sequence

if _GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton._C.libtriton import ir as _ir
    from triton.experimental.gluon.language._core import builtin
    from triton.language.core import _aggregate as aggregate

_DISABLED = False  # A/B switch for experiments and tests; FLASHTRON_GLUON=0 turns off both Hopper kernels
ROWS = 64  # query rows per block, and keys per consumer
# Q/dO ring depth per head dim.  D = 128 fills shared memory at 2 (213 KB, 226 KB persistent); D = 64 has room, and
# 4 slots measured 1.00x-1.05x over 2 on an H200, 6 no better (BENCHMARKS.md, session 15; the forward's K/V rings
# gained nothing from depth).
STAGES = {64: 4, 128: 2}
CONSUMER_REGISTERS = 240
# Per head dim, whether each consumer computes dQ over its own 64 keys and every column (True) instead of half the
# columns over both consumers' keys (the split the module's docstring describes).  At D = 64 the part is 32
# registers either way and the consumers no longer wait for each other's dS every step: 1.02x-1.06x without a mask,
# 0.99x-1.03x causal, 1.01x for a window, for twice the reduce-add bytes (H200, BENCHMARKS.md session 22).  At
# D = 128 a whole-width part is 64 registers, which spilled (session 11).
DQ_BY_KEYS = {64: True, 128: False}
POSTPROCESS_BLOCK = 4096  # dQ elements per program of attention_backward_postprocess
_PLANS = launch_plans.table()  # launch_plans.key -> the prepared launches of `backward` (preprocess, main, postprocess)
# From which sequence length (the longer of Sq and Sk; with variable lengths, the longest) this kernel takes each
# (head dim, mask: causal or a window), as (dense, variable-length); shorter sequences keep backward.py, whichever
# kernel ran the forward.  Measured on an H200 against backward.py, non-causal / causal: D = 128 (BENCHMARKS.md,
# session 11, backward alone) at 512 1.13x / 1.01x (not measured below), 1k 1.17x / 1.03x, 2k 1.15x / 1.04x, from
# 4k 1.18x-1.29x, window (1024, 0) 1.24x-1.33x from 1k; D = 64 (session 18, within forward+backward) dense at 1k
# 1.00x / 0.96x, 2k 1.07x / 0.98x, 3k 1.06x / 1.00x, 4k 1.08x / 1.04x, variable-length (64 sequences from 128
# tokens to the longest) at 1k 0.95x / 1.09x, 2k 1.01x / 1.15x, 3k 1.05x / 1.19x; dense causal after session 19's
# tile order (backward alone) 1.16x / 1.24x / 1.33x at 1k / 2k / 4k (not measured below); without a mask after
# session 22's changes (backward alone) dense 1.05x / 1.10x / 1.13x and variable-length 1.11x / 1.09x / 1.08x at
# 1k / 1.5k / 2k (not measured below).  Windows take the causal column (at D = 64 not measured on their own).
MIN_SEQLEN = {(64, False): (1024, 1024), (64, True): (1024, 1024), (128, False): (512, 512), (128, True): (512, 512)}


def unsupported_reason(dout, q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
                       dropout_p, plain: bool, seqlens=None, grads=()):
    """None when this kernel computes the call's gradients, else why the portable kernels do.  Arguments as
    in hopper_forward.unsupported_reason; plain also excludes deterministic=True.  grads: the tensors dq, dk
    and dv go to, where the caller gives them."""
    if _DISABLED:
        return "disabled"
    reason = hopper_forward.unsupported_reason(q, k, v, softmax_scale, window_left, window_right, softcap,
                                               alibi_slopes, sinks, dropout_p, plain, seqlens, check_length=False)
    if reason is None and _box(dout) is None:
        return "dout's strides do not allow TMA boxes"
    if reason is None and any(_box(t) is None for t in grads):
        return "the given gradients' strides do not allow TMA boxes"
    if reason is None:
        masked = window_left >= 0 or window_right >= 0
        if (q.shape[-1], masked) not in MIN_SEQLEN:
            return f"head dim {q.shape[-1]} (the backward takes {sorted({d for d, _ in MIN_SEQLEN})})"
        if max(seqlens or (q.shape[1], k.shape[1])) < MIN_SEQLEN[q.shape[-1], masked][seqlens is not None]:
            return "short sequences (backward.py is as fast or faster there)"
    return reason


if _GLUON:
    _LOG2E = gl.constexpr(LOG2E)
    _ONE = gl.constexpr(gl.BlockedLayout([1], [32], [4], [0]))  # one element per thread of 4 warps

    @builtin
    def _tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        """global[box at coord] += src, by the TMA engine (cp.reduce.async.bulk.tensor ... add): Triton builds
        this op for `tensor_descriptor.atomic_add`, Gluon 3.6 does not expose it.  Completes like a TMA store
        (tma.store_wait)."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(_ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord,
                                                  src.handle)

    @aggregate
    class _Shared:
        """What every partition of one CTA sees."""
        q_desc: tma.tensor_descriptor
        k_desc: tma.tensor_descriptor
        v_desc: tma.tensor_descriptor
        do_desc: tma.tensor_descriptor
        dq_desc: tma.tensor_descriptor  # float32 (batch, seqlen_q, heads * headdim)
        dk_desc: tma.tensor_descriptor
        dv_desc: tma.tensor_descriptor
        q_smem: gl.shared_memory_descriptor  # (ring slots, 1, 64 rows, headdim)
        do_smem: gl.shared_memory_descriptor  # (ring slots, 1, 64 rows, headdim)
        k_smem: gl.shared_memory_descriptor  # (2 consumers, 1, 64 keys, headdim)
        v_smem: gl.shared_memory_descriptor  # (2 consumers, 1, 64 keys, headdim)
        p_smem: gl.shared_memory_descriptor  # (2 consumers x slots, 64 rows, 64 keys): P; persistent: dV's way out
        ds_smem: gl.shared_memory_descriptor  # (2 steps x 2 consumers, 64 rows, 64 keys); split dQ reads both
        stats_smem: gl.shared_memory_descriptor  # (ring slots, 128) float32: a query block's lse, then its delta
        dq_smem: gl.shared_memory_descriptor  # (2 consumers, 1, 64 rows, dQ part's columns) float32: dQ's way out
        kv_full: gl.shared_memory_descriptor
        kv_empty: gl.shared_memory_descriptor  # persistent: both consumers are done with a tile's K and V
        qdo_full: gl.shared_memory_descriptor
        qdo_empty: gl.shared_memory_descriptor
        ds_ready: gl.shared_memory_descriptor  # (2 steps): both consumers' dS of a step are in ds_smem
        tile_smem: gl.shared_memory_descriptor  # persistent: (2, 1) int32, the next tiles' numbers (_hand_over)
        tile_full: gl.shared_memory_descriptor
        tile_empty: gl.shared_memory_descriptor
        TileCounter: gl.tensor  # persistent: int32, zero at launch; the tiles taken after each program's first
        Lse: gl.tensor
        Delta: gl.tensor  # softmax_lse's layout
        lse_head_stride: gl.tensor  # VARLEN only: softmax_lse is (heads, total_q)
        CuSeqlensQ: gl.tensor  # VARLEN only
        CuSeqlensK: gl.tensor
        DK: gl.tensor
        DV: gl.tensor
        num_heads: gl.tensor
        group: gl.tensor
        seqlen_q: gl.tensor  # VARLEN: the longest sequence's
        seqlen_k: gl.tensor
        num_n_blocks: gl.tensor
        num_tiles: gl.tensor
        head_group: gl.tensor  # causal tile order: heads per group (_tile)
        qk_scale_log2: gl.tensor
        softmax_scale: gl.tensor
        window_left: gl.tensor
        window_right: gl.tensor
        HAS_LEFT: gl.constexpr
        HAS_RIGHT: gl.constexpr
        PERSISTENT: gl.constexpr
        VARLEN: gl.constexpr

        @gluon.constexpr_function
        def __init__(self, q_desc, k_desc, v_desc, do_desc, dq_desc, dk_desc, dv_desc, q_smem, do_smem, k_smem, v_smem,
                     p_smem, ds_smem, stats_smem, dq_smem, kv_full, kv_empty, qdo_full, qdo_empty, ds_ready, tile_smem,
                     tile_full, tile_empty, TileCounter, Lse, Delta, lse_head_stride, CuSeqlensQ, CuSeqlensK, DK, DV,
                     num_heads, group, seqlen_q, seqlen_k, num_n_blocks, num_tiles, head_group, qk_scale_log2,
                     softmax_scale, window_left, window_right, HAS_LEFT, HAS_RIGHT, PERSISTENT, VARLEN):
            self.q_desc = q_desc
            self.k_desc = k_desc
            self.v_desc = v_desc
            self.do_desc = do_desc
            self.dq_desc = dq_desc
            self.dk_desc = dk_desc
            self.dv_desc = dv_desc
            self.q_smem = q_smem
            self.do_smem = do_smem
            self.k_smem = k_smem
            self.v_smem = v_smem
            self.p_smem = p_smem
            self.ds_smem = ds_smem
            self.stats_smem = stats_smem
            self.dq_smem = dq_smem
            self.kv_full = kv_full
            self.kv_empty = kv_empty
            self.qdo_full = qdo_full
            self.qdo_empty = qdo_empty
            self.ds_ready = ds_ready
            self.tile_smem = tile_smem
            self.tile_full = tile_full
            self.tile_empty = tile_empty
            self.TileCounter = TileCounter
            self.Lse = Lse
            self.Delta = Delta
            self.lse_head_stride = lse_head_stride
            self.CuSeqlensQ = CuSeqlensQ
            self.CuSeqlensK = CuSeqlensK
            self.DK = DK
            self.DV = DV
            self.num_heads = num_heads
            self.group = group
            self.seqlen_q = seqlen_q
            self.seqlen_k = seqlen_k
            self.num_n_blocks = num_n_blocks
            self.num_tiles = num_tiles
            self.head_group = head_group
            self.qk_scale_log2 = qk_scale_log2
            self.softmax_scale = softmax_scale
            self.window_left = window_left
            self.window_right = window_right
            self.HAS_LEFT = gl.constexpr(HAS_LEFT)
            self.HAS_RIGHT = gl.constexpr(HAS_RIGHT)
            self.PERSISTENT = gl.constexpr(PERSISTENT)
            self.VARLEN = gl.constexpr(VARLEN)

    @gluon.jit
    def _tile(a, tile):
        """(sequence (hopper_forward._sequence), kv head, key block) of a tile.  Under causal (a right window
        edge and no left one) the tiles go in groups of head_group heads (_head_group: about one round of
        programs), and within a group the key blocks seen by the most query rows (the first ones) come first,
        across its heads.  Otherwise one head's blocks are adjacent.  Either way concurrent programs share a few
        heads' Q, dO and dQ sums in L2.  A variable-length batch, causal or not, keeps one head's blocks
        adjacent: across its many sequences and heads, the first blocks share nothing in L2 (0.96x of
        backward.py against 1.24x, BENCHMARKS.md session 12), and the hardware's order balances tiles of unequal
        work."""
        batch_heads = a.num_tiles // a.num_n_blocks
        if a.HAS_RIGHT and not a.HAS_LEFT and not a.VARLEN:
            group_tiles = a.head_group * a.num_n_blocks
            first_head = tile // group_tiles * a.head_group
            heads = gl.minimum(a.head_group, batch_heads - first_head)  # the last group may have fewer
            n_block = tile % group_tiles // heads
            batch_head = first_head + tile % group_tiles % heads
        else:
            n_block = tile % a.num_n_blocks
            batch_head = tile // a.num_n_blocks
        num_heads_kv = a.num_heads // a.group
        return _sequence(a, batch_head // num_heads_kv), batch_head % num_heads_kv, n_block

    @gluon.jit
    def _query_blocks(a, n_block, seqlen_q, seqlen_k):
        """The query blocks [first, end) whose rows see any of the key block's keys (end >= first).  Windows
        are aligned bottom-right: row r sees keys r + seqlen_k - seqlen_q - window_left to
        r + seqlen_k - seqlen_q + window_right.  A VARLEN key block past its sequence's end has none."""
        ROWS: gl.constexpr = a.q_desc.block_type.shape[1]
        KEYS: gl.constexpr = 2 * ROWS
        key_shift = seqlen_k - seqlen_q
        end = gl.cdiv(seqlen_q, ROWS)
        if a.VARLEN:
            end = gl.where(n_block * KEYS < seqlen_k, end, 0)
        first = 0
        if a.HAS_RIGHT:
            first_row = gl.maximum(n_block * KEYS - key_shift - a.window_right, 0)
            first = gl.minimum(first_row // ROWS, end)
        if a.HAS_LEFT:
            rows_before_end = gl.maximum(n_block * KEYS + KEYS - key_shift + a.window_left, 0)  # last row + 1
            end = gl.maximum(gl.minimum(end, gl.cdiv(rows_before_end, ROWS)), first)
        if a.VARLEN:
            end = gl.maximum(end, first)
        return first, end

    @gluon.jit
    def _hand_over(a, i, tile):
        """Producer, persistent: tell both consumers that the program's i-th tile is `tile` (num_tiles: there
        are no more), through a two-slot ring of tile numbers in shared memory."""
        slot = i % 2
        mbarrier.wait(a.tile_empty.index(slot), ((i // 2) & 1) ^ 1)
        a.tile_smem.index(slot).store(gl.full([1], tile, gl.int32, layout=_ONE))
        gl.thread_barrier()  # every producer thread's store is before the arrival (which releases them)
        mbarrier.arrive(a.tile_full.index(slot))

    @gluon.jit
    def _take_over(a, i):
        """Consumer, persistent: the program's i-th tile (see _hand_over)."""
        slot = i % 2
        mbarrier.wait(a.tile_full.index(slot), (i // 2) & 1)
        tile = gl.sum(a.tile_smem.index(slot).load(_ONE), axis=0)
        gl.thread_barrier()  # every thread has read the slot before it is given back
        mbarrier.arrive(a.tile_empty.index(slot))
        return tile

    @gluon.jit
    def _producer(a):
        if a.PERSISTENT:
            # Tiles by arrival: each program's first tile is its program id, and a program that finishes a tile
            # takes the next untaken one from a counter, so tiles keep their order (one head's key blocks run
            # together) and the programs end within about one tile of each other.  The next tile is taken once this
            # one's blocks are all copied (about two steps before its end, time enough for the atomic): taken at the
            # tile's start, it was reserved a whole tile ahead, and the programs ended up to 1.6 tiles apart
            # (window (1024, 0): 1.009x this way, BENCHMARKS.md session 31).
            done = 0  # the program's blocks in earlier tiles: ring slots and phases run on across tiles
            loaded = 0  # its earlier tiles with any block (the others copy no K and V)
            i = 0
            tile = gl.program_id(0)
            while tile < a.num_tiles:
                _hand_over(a, i, tile)
                steps = _producer_tile(a, tile, done, loaded)
                next_tile = gl.num_programs(0) + gl.atomic_add(a.TileCounter, 1, sem="relaxed")
                done += steps
                loaded += (steps > 0).to(gl.int32)
                tile = next_tile
                i += 1
            _hand_over(a, i, a.num_tiles)
        else:
            _producer_tile(a, gl.program_id(0), 0, 0)

    @gluon.jit
    def _producer_tile(a, tile, done, loaded):
        """Copy a tile's K and V, and Q and dO of each query block that sees it, into the rings; the tile's
        blocks are the program's done-th on, its K and V the loaded-th.  Returns the tile's block count."""
        ROWS: gl.constexpr = a.q_desc.block_type.shape[1]
        HEAD_DIM: gl.constexpr = a.q_desc.block_type.shape[2]
        RING: gl.constexpr = a.q_smem.type.shape[0]
        seq, head_kv, n_block = _tile(a, tile)
        box_batch, q_start, k_start, seqlen_q, seqlen_k = seq
        first_key = n_block * 2 * ROWS
        kv_col = head_kv * HEAD_DIM
        first_m, end_m = _query_blocks(a, n_block, seqlen_q, seqlen_k)
        per_head = end_m - first_m
        steps = a.group * per_head
        stat_index = gl.arange(0, 2 * ROWS, layout=_ONE)
        for local_step in range(steps):
            step = done + local_step
            head = head_kv * a.group + local_step // per_head
            m_block = first_m + local_step % per_head
            slot = step % RING
            mbarrier.wait(a.qdo_empty.index(slot), ((step // RING) & 1) ^ 1)
            # The block's lse and delta, one float per thread (rows past seqlen_q read as zeros), by cp.async, so
            # that the consumers read them from shared memory; the cp.async arrival holds the slot's phase until
            # they land, and goes before the expect so that the phase cannot end without it.
            rows = m_block * ROWS + stat_index % ROWS
            stats = _row_stats(a, box_batch, head, q_start) + rows
            async_copy.async_copy_global_to_shared(a.stats_smem.index(slot),
                                                   gl.where(stat_index < ROWS, a.Lse + stats, a.Delta + stats),
                                                   mask=rows < seqlen_q)
            async_copy.mbarrier_arrive(a.qdo_full.index(slot))
            mbarrier.expect(a.qdo_full.index(slot), 2 * a.q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a.q_desc, [box_batch, q_start + m_block * ROWS, head * HEAD_DIM],
                                            a.qdo_full.index(slot), a.q_smem.index(slot))
            tma.async_copy_global_to_shared(a.do_desc, [box_batch, q_start + m_block * ROWS, head * HEAD_DIM],
                                            a.qdo_full.index(slot), a.do_smem.index(slot))
            if local_step == 0:
                # K and V go out after the first Q and dO (needed as soon, half the bytes).  Written this way,
                # not as a copy before the loop, the kernel measured 4-5% faster non-causal and the same
                # elsewhere (BENCHMARKS.md, session 11).  A key block no query sees (steps == 0) copies nothing.
                if a.PERSISTENT:  # the consumers are done with the previous K and V
                    mbarrier.wait(a.kv_empty, (loaded & 1) ^ 1)
                mbarrier.expect(a.kv_full, 4 * a.k_desc.block_type.nbytes)
                for w in gl.static_range(2):
                    key_row = k_start + first_key + w * ROWS
                    tma.async_copy_global_to_shared(a.k_desc, [box_batch, key_row, kv_col], a.kv_full,
                                                    a.k_smem.index(w))
                    tma.async_copy_global_to_shared(a.v_desc, [box_batch, key_row, kv_col], a.kv_full,
                                                    a.v_smem.index(w))
        return steps

    @gluon.jit
    def _store_rows(ptr, tile, first_row, head_kv, first_key, num_heads_kv, seqlen_k):
        """Store a (64 keys, headdim) tile of dK or dV (rows num_heads_kv * headdim apart, the sequence's keys
        from row first_row on), rows past seqlen_k left out."""
        ROWS: gl.constexpr = tile.type.shape[0]
        HEAD_DIM: gl.constexpr = tile.type.shape[1]
        layout: gl.constexpr = tile.type.layout
        keys = first_key + gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
        base = ptr + ((first_row + first_key).to(gl.int64) * num_heads_kv + head_kv) * HEAD_DIM
        offsets = (keys - first_key)[:, None] * (num_heads_kv * HEAD_DIM) + cols[None, :]
        gl.store(base + offsets, tile, mask=(keys < seqlen_k)[:, None])

    @gluon.jit
    def _consumer(a, WG: gl.constexpr):
        if a.PERSISTENT:
            done = 0  # as in _producer
            loaded = 0
            i = 0
            live = True
            # The tile number is read at the top of the body: carried in the loop's condition instead, it made
            # ptxas spill 876 bytes (160 this way) and the kernel 0.7x as fast (BENCHMARKS.md, session 15).
            while live:
                tile = _take_over(a, i)
                live = tile < a.num_tiles
                if live:
                    steps = _consumer_tile(a, WG, tile, done, loaded)
                    done += steps
                    loaded += (steps > 0).to(gl.int32)
                i += 1
        else:
            _consumer_tile(a, WG, gl.program_id(0), 0, 0)
        tma.store_wait(0)  # the last reduce-add has read dq_tile before the program's shared memory goes

    @gluon.jit
    def _consumer_tile(a, WG: gl.constexpr, tile, done, loaded):
        """One consumer's share of a tile (see _producer_tile): dQ parts out as it goes, then its 64 keys' dK
        and dV.  Returns the tile's block count."""
        ROWS: gl.constexpr = a.q_desc.block_type.shape[1]
        HEAD_DIM: gl.constexpr = a.q_desc.block_type.shape[2]
        DQ_COLS: gl.constexpr = a.dq_desc.block_type.shape[2]  # head dim / 2 (dQ split by columns) or all of it
        BY_KEYS: gl.constexpr = DQ_COLS == HEAD_DIM  # DQ_BY_KEYS
        FIRST_COL: gl.constexpr = 0 if BY_KEYS else WG * DQ_COLS  # of this consumer's dQ part
        RING: gl.constexpr = a.q_smem.type.shape[0]
        dtype: gl.constexpr = a.q_desc.dtype
        s_layout: gl.constexpr = _acc_layout(ROWS, 16)
        acc_layout: gl.constexpr = _acc_layout(HEAD_DIM, 16)
        dq_layout: gl.constexpr = _acc_layout(DQ_COLS, 16)
        row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
        seq, head_kv, n_block = _tile(a, tile)
        box_batch, q_start, k_start, seqlen_q, seqlen_k = seq
        first_key = n_block * 2 * ROWS + WG * ROWS
        key_cols = gl.arange(0, ROWS, layout=gl.SliceLayout(0, s_layout))  # the block's key offsets
        keys = first_key + key_cols
        first_m, end_m = _query_blocks(a, n_block, seqlen_q, seqlen_k)
        per_head = end_m - first_m
        steps = a.group * per_head
        key_shift = seqlen_k - seqlen_q
        k_tile = a.k_smem.index(WG).reshape([ROWS, HEAD_DIM])
        v_tile = a.v_smem.index(WG).reshape([ROWS, HEAD_DIM])
        # Split by columns (not BY_KEYS), dQ's part is this consumer's half of the head dim over both consumers' keys.
        k_cols_0 = a.k_smem.index(0).reshape([ROWS, HEAD_DIM]).slice(FIRST_COL, DQ_COLS, dim=1)
        k_cols_1 = a.k_smem.index(1).reshape([ROWS, HEAD_DIM]).slice(FIRST_COL, DQ_COLS, dim=1)
        p_tile = a.p_smem.index(WG * (a.p_smem.type.shape[0] // 2))
        dq_tile = a.dq_smem.index(WG).reshape([ROWS, DQ_COLS])
        dk = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=acc_layout)
        dv = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=acc_layout)
        if steps > 0:  # else the producer copies no K and V; dK and dV are zeros
            mbarrier.wait(a.kv_full, loaded & 1)
        if a.PERSISTENT:
            tma.store_wait(0)  # the previous tile's dV box has read P's tile
        for local_step in range(steps):
            step = done + local_step
            head = head_kv * a.group + local_step // per_head
            m_block = first_m + local_step % per_head
            slot = step % RING
            buf = step % 2
            ds_tile = a.ds_smem.index(2 * buf + WG)
            mbarrier.wait(a.qdo_full.index(slot), (step // RING) & 1)
            q_tile = a.q_smem.index(slot).reshape([ROWS, HEAD_DIM])
            do_tile = a.do_smem.index(slot).reshape([ROWS, HEAD_DIM])
            # Under a sliding window (a left edge), a block none of whose (row, key) pairs is visible (one
            # consumer's keys at the band's ends, or past seqlen_k) skips S, dP and the softmax gradient: its P
            # and dS are zeros, which dK and dQ read (split by columns, the other consumer's dQ too).  Without a
            # left edge `visible` stays a constant: the branch cost causal 16k 5% (session 10).
            visible = True
            if a.HAS_LEFT:
                first_row_key = m_block * ROWS + key_shift - a.window_left  # the block's first row's first key
                visible = (first_key < seqlen_k) & (first_key + ROWS - 1 >= first_row_key)
                if a.HAS_RIGHT:
                    visible = visible & (first_key <= m_block * ROWS + ROWS - 1 + key_shift + a.window_right)
            if visible:
                s = warpgroup_mma(q_tile, k_tile.permute((1, 0)), gl.zeros([ROWS, ROWS], gl.float32, layout=s_layout),
                                  use_acc=False, is_async=True)
                dp = warpgroup_mma(do_tile, v_tile.permute((1, 0)), gl.zeros([ROWS, ROWS], gl.float32, layout=s_layout),
                                   use_acc=False, is_async=True)
                rows = m_block * ROWS + gl.arange(0, ROWS, layout=row_layout)
                stats = a.stats_smem.index(slot)
                lse = stats.slice(0, ROWS).load(row_layout) * _LOG2E
                delta = stats.slice(ROWS, ROWS).load(row_layout)
                if m_block * ROWS + ROWS > seqlen_q:
                    # Rows past seqlen_q (zeros from the copy, or a VARLEN neighbour's) get lse +inf, so their
                    # probabilities and dS are 0: they add nothing to dK and dV, and zeros to dQ.
                    lse = gl.where(rows < seqlen_q, lse, float("inf"))
                s = warpgroup_mma_wait(1, deps=(s, ))
                if a.VARLEN:  # keys past seqlen_k are the next sequence's (in a dense call, zeros from the copy:
                    # K's zero rows keep their dS out of dQ, and their dK and dV are not stored)
                    if first_key + ROWS > seqlen_k:
                        s = gl.where(key_cols[None, :] < seqlen_k - first_key, s, float("-inf"))
                if a.HAS_RIGHT:
                    if first_key + ROWS - 1 > m_block * ROWS + key_shift + a.window_right:  # the edge crosses the block
                        # The block's key offsets (constants per register) against one bound per row: with the
                        # keys' own indices held through the loop, ptxas spilled (D = 128 spill stores, bytes:
                        # causal 104 against 4 this way, variable-length causal 236 against 52, variable-length
                        # window 432 against 284).  Dense windows keep the keys' indices: this way they spilled
                        # more (196 against 148) and ran 2-8% slower (BENCHMARKS.md, session 30).
                        if a.VARLEN or not a.HAS_LEFT:
                            last = rows + (key_shift + a.window_right - first_key)  # each row's last key, in the block
                            s = gl.where(key_cols[None, :] <= last[:, None], s, float("-inf"))
                        else:
                            s = gl.where(keys[None, :] <= (rows + key_shift + a.window_right)[:, None], s,
                                         float("-inf"))
                if a.HAS_LEFT:
                    if first_key < m_block * ROWS + ROWS - 1 + key_shift - a.window_left:
                        if a.VARLEN:  # in block key offsets, as the right edge's mask
                            first = rows + (key_shift - a.window_left - first_key)  # each row's first key, in the block
                            s = gl.where(key_cols[None, :] >= first[:, None], s, float("-inf"))
                        else:
                            s = gl.where(keys[None, :] >= (rows + key_shift - a.window_left)[:, None], s,
                                         float("-inf"))
                p = gl.exp2(s * a.qk_scale_log2 - lse[:, None])
                p_tile.store(p.to(dtype))
                dp = warpgroup_mma_wait(0, deps=(dp, ))
                ds = p * (dp - delta[:, None])
                ds_tile.store(ds.to(dtype))
            else:
                p_tile.store(gl.zeros([ROWS, ROWS], dtype, layout=s_layout))
                ds_tile.store(gl.zeros([ROWS, ROWS], dtype, layout=s_layout))
            fence_async_shared()
            gl.thread_barrier()
            if not BY_KEYS:
                mbarrier.arrive(a.ds_ready.index(buf))
            # dV and dK need only this consumer's P and dS: they run while the other consumer finishes its dS.
            dv = warpgroup_mma(p_tile.permute((1, 0)), do_tile, dv, is_async=True)
            dk = warpgroup_mma(ds_tile.permute((1, 0)), q_tile, dk, is_async=True)
            if BY_KEYS:  # this consumer's keys, every column: no wait for the other consumer
                dq = warpgroup_mma(ds_tile, k_tile, gl.zeros([ROWS, DQ_COLS], gl.float32, layout=dq_layout),
                                   use_acc=False, is_async=True)
            else:
                mbarrier.wait(a.ds_ready.index(buf), (step // 2) & 1)
                dq = warpgroup_mma(a.ds_smem.index(2 * buf), k_cols_0,
                                   gl.zeros([ROWS, DQ_COLS], gl.float32, layout=dq_layout), use_acc=False,
                                   is_async=True)
                dq = warpgroup_mma(a.ds_smem.index(2 * buf + 1), k_cols_1, dq, is_async=True)
            dv, dk, dq = warpgroup_mma_wait(0, deps=(dv, dk, dq))
            mbarrier.arrive(a.qdo_empty.index(slot))
            tma.store_wait(0)  # the previous block's reduce-add has read dq_tile
            dq_tile.store(dq)
            fence_async_shared()
            gl.thread_barrier()
            # Out while the next block's S and dP run.
            _tma_reduce_add(a.dq_desc, [box_batch, q_start + m_block * ROWS, head * HEAD_DIM + FIRST_COL],
                            a.dq_smem.index(WG))
        if a.PERSISTENT:
            if steps > 0:  # every matmul that read K and V is complete: the next tile's copy runs under the stores
                mbarrier.arrive(a.kv_empty)
        dk_out = (dk * a.softmax_scale).to(dtype)
        dv_out = dv.to(dtype)
        # dK and dV out through shared memory and TMA boxes: dK through this consumer's dQ staging tile, dV through
        # its V tile (the other consumer never reads it) or, persistent, its P tile grown to 64 x headdim, so that
        # K and V are free before the stores (session 13 had the next tile's copy wait for dV's box; this way the
        # window (1024, 0) ran 1.009x, (256, 0) 1.037x, BENCHMARKS.md session 31; with one program per tile it
        # gained nothing, and lost 3% at D = 64 without a mask).  From registers instead (st.global of 16 bytes per
        # row and instruction: 6 us a tile on an H200, BENCHMARKS.md session 13) only where a box cannot go: a tile
        # without blocks (persistent, its K and V buffers may be refilled already) and a VARLEN block that ends past
        # its sequence (the box would write the next sequence's rows).
        if steps > 0 and (not a.VARLEN or first_key + ROWS <= seqlen_k):
            tma.store_wait(0)  # the last reduce-add has read dq_tile
            dk_tile = a.dq_smem.index(WG)._reinterpret(dtype, [1, ROWS, HEAD_DIM], a.dk_desc.layout)
            dk_tile.reshape([ROWS, HEAD_DIM]).store(dk_out)
            if a.PERSISTENT:  # the next tile's first step waits for the box before it writes P
                dv_tile = p_tile._reinterpret(dtype, [1, ROWS, HEAD_DIM], a.dv_desc.layout)
            else:
                dv_tile = a.v_smem.index(WG)
            dv_tile.reshape([ROWS, HEAD_DIM]).store(dv_out)
            fence_async_shared()
            gl.thread_barrier()
            key_row = k_start + first_key
            tma.async_copy_shared_to_global(a.dk_desc, [box_batch, key_row, head_kv * HEAD_DIM], dk_tile)
            tma.async_copy_shared_to_global(a.dv_desc, [box_batch, key_row, head_kv * HEAD_DIM], dv_tile)
        else:
            num_heads_kv = a.num_heads // a.group
            first_row = box_batch * a.seqlen_k + k_start
            _store_rows(a.DK, dk_out, first_row, head_kv, first_key, num_heads_kv, seqlen_k)
            _store_rows(a.DV, dv_out, first_row, head_kv, first_key, num_heads_kv, seqlen_k)
        return steps

    @compiled.fast_launch
    @gluon.jit(do_not_specialize=["lse_head_stride", "num_heads", "group", "seqlen_q", "seqlen_k",
                                  "num_n_blocks", "num_tiles", "head_group", "window_left", "window_right"])
    def hopper_backward_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, dk_desc, dv_desc, TileCounter, Lse, Delta,
                               lse_head_stride, CuSeqlensQ, CuSeqlensK, DK, DV, num_heads, group, seqlen_q, seqlen_k,
                               num_n_blocks, num_tiles, head_group, qk_scale_log2, softmax_scale, window_left,
                               window_right, HAS_LEFT: gl.constexpr, HAS_RIGHT: gl.constexpr, PERSISTENT: gl.constexpr,
                               VARLEN: gl.constexpr, RING: gl.constexpr, CONSUMER_REGS: gl.constexpr):
        ROWS: gl.constexpr = q_desc.block_type.shape[1]
        dtype: gl.constexpr = q_desc.dtype
        q_smem = gl.allocate_shared_memory(dtype, [RING] + q_desc.block_type.shape, q_desc.layout)
        do_smem = gl.allocate_shared_memory(dtype, [RING] + q_desc.block_type.shape, q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
        p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, ROWS], dtype)
        # Persistent: each consumer's P tile is followed by room for a (64, headdim) dV box (D = 128: 16 KB more, 226 KB
        # in all).
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[2]
        p_smem = gl.allocate_shared_memory(dtype, [2 * (HEAD_DIM // ROWS if PERSISTENT else 1), ROWS, ROWS], p_layout)
        ds_smem = gl.allocate_shared_memory(dtype, [4, ROWS, ROWS], p_layout)
        stats_smem = gl.allocate_shared_memory(gl.float32, [RING, 2 * ROWS],
                                               gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
        dq_smem = gl.allocate_shared_memory(gl.float32, [2] + dq_desc.block_type.shape, dq_desc.layout)
        kv_full = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        qdo_full = gl.allocate_shared_memory(gl.int64, [RING, 1], mbarrier.MBarrierLayout())
        qdo_empty = gl.allocate_shared_memory(gl.int64, [RING, 1], mbarrier.MBarrierLayout())
        ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        tile_smem = gl.allocate_shared_memory(gl.int32, [2, 1], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
        tile_full = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        tile_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        # "full": the copy's transaction bytes.  "empty" and "ready": one arrival per consumer warpgroup.
        mbarrier.init(kv_full, count=1)
        mbarrier.init(kv_empty, count=2)
        for i in gl.static_range(RING):
            mbarrier.init(qdo_full.index(i), count=1)
            mbarrier.init(qdo_empty.index(i), count=2)
        for i in gl.static_range(2):
            mbarrier.init(ds_ready.index(i), count=2)
            mbarrier.init(tile_full.index(i), count=1)
            mbarrier.init(tile_empty.index(i), count=2)
        fence_async_shared()
        a = _Shared(q_desc, k_desc, v_desc, do_desc, dq_desc, dk_desc, dv_desc, q_smem, do_smem, k_smem, v_smem,
                    p_smem, ds_smem, stats_smem, dq_smem, kv_full, kv_empty, qdo_full, qdo_empty, ds_ready, tile_smem,
                    tile_full, tile_empty, TileCounter, Lse, Delta, lse_head_stride, CuSeqlensQ, CuSeqlensK, DK, DV,
                    num_heads, group, seqlen_q, seqlen_k, num_n_blocks, num_tiles, head_group, qk_scale_log2,
                    softmax_scale, window_left, window_right, HAS_LEFT, HAS_RIGHT, PERSISTENT, VARLEN)
        gl.warp_specialize([(_producer, (a, )), (_consumer, (a, 0)), (_consumer, (a, 1))], [4, 4],
                           [CONSUMER_REGS, CONSUMER_REGS])


PERSISTENT_UP_TO = 2048  # see _persistent


def _persistent(head_dim: int, window_left: int, window_right: int, varlen, seqlen: int) -> bool:
    """Whether one program per SM takes tiles by arrival (PERSISTENT, see _producer) rather than one program
    per tile.  The persistent build releases K and V before a tile's epilogue, so the next tile's copy runs
    under its dK and dV stores, but carries more state through the step loop (D = 128 causal: 44 bytes of
    spills against 4).  Taken
    - for windows with a left edge, whose tiles are short: 1.07x-1.09x (H200, session 11, then in the
      forward's static snake order; tiles by arrival added 1.00x-1.08x, session 15; the early K/V release
      1.022x-1.049x, session 31);
    - for dense calls of at most PERSISTENT_UP_TO tokens (seqlen: the longer of Sq and Sk) at D = 128, and
      causal ones (a right edge) at D = 64, whose tiles are a few steps long.  Forward+backward against one
      program per tile (BENCHMARKS.md session 38, an H100 and an H200): D = 128 1.028x-1.039x at 1k and
      1.009x-1.016x at 2k (4k 0.996x-1.010x), D = 64 causal 1.026x-1.034x at 1k-2k (4k 1.010x-1.012x); D = 64
      without a mask 0.978x-1.010x at 1k-2k and 0.953x at 4k, so it keeps one program per tile, as do longer
      calls (16k causal 0.948x-0.993x) and variable-length batches without a left edge (not measured), whose
      tiles the hardware's order balances."""
    if window_left >= 0:
        return True
    if varlen is not None or seqlen > PERSISTENT_UP_TO:
        return False
    return head_dim == 128 or window_right >= 0


def _head_group(batch_heads: int, num_n_blocks: int, programs: int) -> int:
    """The causal tile order's group of heads (_tile): as many as make one round of `programs` (the SM count),
    at least one.  Interleaving every head's key blocks instead (longest first, for balance) gave each
    concurrent program a head of its own at short lengths, so every Q and dO copy and dQ reduce-add went to
    HBM.  Measured on an H200 over that order, whole backward (session 19): D = 128 1.29x / 1.33x / 1.16x /
    1.10x / 1.06x at 1k / 2k / 4k / 8k / 16k, D = 64 1.20x-1.29x from 1k to 8k and 1.13x at 16k, each
    within 1% of the best group size tried (1, 2, 4, 8 or 16 heads)."""
    return max(1, min(batch_heads, round(programs / num_n_blocks)))


def backward(dout, q, k, v, out, lse, delta, dq, dk, dv, softmax_scale: float, window_left: int, window_right: int,
             varlen=None) -> None:
    """delta = rowsum(dout * out) (lse's layout), then dq, dk, dv, for a call `unsupported_reason` accepted.  dq, dk
    and dv are contiguous (the launcher allocates them) or, where the caller gives them, boxable (`_box`).  A
    window side of -1 is unbounded.  Tensors and varlen as in hopper_forward.forward."""
    # dQ's float32 sums, and after them the persistent programs' tile counter (int32).  The preprocess zeroes both
    # for dense calls; a variable-length batch's rows past its last sequence are no sequence's, so it is zeroed here.
    numel = q.numel()
    dq_buffer = (torch.zeros if varlen is not None else torch.empty)(numel + 1, dtype=torch.float32, device=q.device)
    tile_counter = dq_buffer[numel:].view(torch.int32)
    plan_key = launch_plans.key((dout, q, k, v, out, lse, delta, dq, dk, dv, *(varlen or (None, None))[:2]),
                                softmax_scale, window_left, window_right, varlen and varlen[2:])
    prepared = _PLANS.get(plan_key)
    if prepared is not None:
        # dq_buffer stands for dQ's sums wherever they go (the same first element, the strides in the plan).
        cu_seqlens_q, cu_seqlens_k = (lse, lse) if varlen is None else varlen[:2]
        preprocess, main, postprocess = prepared
        preprocess(out, dout, delta, cu_seqlens_q, cu_seqlens_q, dq_buffer, tile_counter)
        main(q, k, v, dout, dq_buffer, dk, dv, tile_counter, lse, delta, cu_seqlens_q, cu_seqlens_k, dk, dv)
        postprocess(dq_buffer, dq)
        return
    num_heads, head_dim = q.shape[2], q.shape[3]
    num_heads_kv = k.shape[2]
    batch, seqlen_q, seqlen_k, cu_seqlens_q, cu_seqlens_k = hopper_forward.sequences(q, k, lse, varlen)
    dq_accum = dq_buffer[:numel].view(q.shape)
    pre_blocks = -(-seqlen_q // PREPROCESS_ROWS)
    # (batch, row, head) strides; a variable-length batch's sequences are rows of its one batch entry.
    strides = (lambda t: (0, t.stride(1), t.stride(2))) if varlen is not None else (lambda t: t.stride()[:3])
    preprocess = attention_backward_preprocess.prepare(
        (pre_blocks * batch * num_heads, ),
        (out, dout, delta, *strides(out), *strides(dout), 0 if varlen is not None else lse.stride(0), lse.stride(-2),
         cu_seqlens_q, cu_seqlens_q, num_heads, seqlen_q, pre_blocks, head_dim, dq_accum, *strides(dq_accum),
         tile_counter),
        dict(BLOCK_D=head_dim, EVEN_D=True, BLOCK_M=PREPROCESS_ROWS, VARLEN=varlen is not None, SEQUSED_Q=False,
             ZERO_DQ=varlen is None),
        varying=(0, 1, 2, 11, 12, 17, 21))
    box = (1, ROWS, head_dim)
    q_desc, k_desc, v_desc, do_desc = (descriptor(t, box) for t in (q, k, v, dout))
    dq_desc = descriptor(dq_accum, (1, ROWS, head_dim if DQ_BY_KEYS[head_dim] else head_dim // 2))
    dk_desc, dv_desc = descriptor(dk, box), descriptor(dv, box)
    num_n_blocks = -(-seqlen_k // (2 * ROWS))
    num_tiles = num_n_blocks * batch * num_heads_kv
    persistent = _persistent(head_dim, window_left, window_right, varlen, max(seqlen_q, seqlen_k))
    programs = hardware.sm_count(q.device)
    main = hopper_backward_kernel.prepare(
        (min(num_tiles, programs) if persistent else num_tiles, ),
        (q_desc, k_desc, v_desc, do_desc, dq_desc, dk_desc, dv_desc, tile_counter, lse, delta, lse.stride(0),
         cu_seqlens_q, cu_seqlens_k, dk, dv, num_heads, num_heads // num_heads_kv, seqlen_q, seqlen_k, num_n_blocks,
         num_tiles, _head_group(batch * num_heads_kv, num_n_blocks, programs), softmax_scale * LOG2E, softmax_scale,
         max(window_left, 0), max(window_right, 0)),
        dict(HAS_LEFT=window_left >= 0, HAS_RIGHT=window_right >= 0, PERSISTENT=persistent, VARLEN=varlen is not None,
             RING=STAGES[head_dim], CONSUMER_REGS=CONSUMER_REGISTERS, num_warps=4),
        varying=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14))
    postprocess = attention_backward_postprocess.prepare(  # on the GPU only
        (triton.cdiv(numel, POSTPROCESS_BLOCK), ),
        (dq_accum, dq, numel, softmax_scale, num_heads * head_dim, dq.shape[1], dq.stride(1), dq.stride(0)),
        dict(BLOCK=POSTPROCESS_BLOCK, UPCAST=False, STRIDED=not dq.is_contiguous()), varying=(0, 1))
    if preprocess is not None and main is not None and postprocess is not None:
        launch_plans.remember(_PLANS, plan_key, (preprocess, main, postprocess))
