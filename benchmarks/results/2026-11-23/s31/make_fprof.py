"""Session 31: stamp the Gluon forward (flashtron_prof's copy of hopper_forward.py) with %globaltimer at each tile's
events into PROF (module global: int64 tensor): per (program, tile, role) 8 slots."""
p = "flashtron_prof/kernels/hopper_forward.py"
s = open(p).read()

def sub(old, new, count=1):
    global s
    assert s.count(old) == count, (s.count(old), old)
    s = s.replace(old, new)

sub("        MASK_FIRST: gl.constexpr  # a block masked at run time takes the mask, then the one softmax (see `mask_first`)\n",
    "        MASK_FIRST: gl.constexpr  # a block masked at run time takes the mask, then the one softmax (see `mask_first`)\n"
    "        Prof: gl.tensor\n        PROFILE: gl.constexpr\n")
sub("                     FP8, FROM_LAST, PLAIN_LOOP, MASK_FIRST):\n            self.q_desc = q_desc",
    "                     FP8, FROM_LAST, PLAIN_LOOP, MASK_FIRST, Prof, PROFILE):\n            self.Prof = Prof\n"
    "            self.PROFILE = gl.constexpr(PROFILE)\n            self.q_desc = q_desc")
sub("    @gluon.jit\n    def _my_tile_count(a):", '''    _FONE = gl.constexpr(gl.BlockedLayout([1], [32], [4], [0]))

    @gluon.jit
    def _fput(a, i, role, slot, value):
        if a.PROFILE:
            idx = ((gl.program_id(0) * 24 + gl.minimum(i, 23)) * 3 + role) * 8 + slot
            v = gl.full([1], 0, gl.int64, layout=_FONE) + value
            gl.store(a.Prof + idx + gl.zeros([1], gl.int32, layout=_FONE), v)

    @gluon.jit
    def _fstamp(a, i, role, slot):
        if a.PROFILE:
            x = gl.full([1], 0, gl.int64, layout=_FONE)
            t = gl.sum(gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [x], dtype=gl.int64,
                                                 is_pure=False, pack=1), axis=0)
            _fput(a, i, role, slot, t)

    @gluon.jit
    def _my_tile_count(a):''')
# producer
sub("""            mbarrier.wait(a.q_empty, (q_count & 1) ^ 1, pred=live)
""", """            _fstamp(a, i, 2, 1)
            mbarrier.wait(a.q_empty, (q_count & 1) ^ 1, pred=live)
            _fstamp(a, i, 2, 2)
            _fput(a, i, 2, 3, n_blocks)
""")
# consumer
sub("""                mbarrier.wait(a.q_full, q_count & 1)
""", """                _fput(a, i, WG, 0, _tile_of(i))
                _fstamp(a, i, WG, 1)
                mbarrier.wait(a.q_full, q_count & 1)
                _fstamp(a, i, WG, 2)
""")
sub("""                scores = warpgroup_mma_wait(0, deps=(scores, ))
                mbarrier.arrive(a.k_empty.index(slot))
""", """                scores = warpgroup_mma_wait(0, deps=(scores, ))
                _fstamp(a, i, WG, 3)
                mbarrier.arrive(a.k_empty.index(slot))
""")
sub("""                p_op = _probabilities(a, probs, p_layout, WG)
                if HEAD_DIM == 256:""", """                p_op = _probabilities(a, probs, p_layout, WG)
                _fstamp(a, i, WG, 4)
                if HEAD_DIM == 256:""")
sub("""                # The last block's P V.
""", """                # The last block's P V.
                _fstamp(a, i, WG, 5)
""")
sub("""                acc = warpgroup_mma_wait(0, deps=(acc, ))
                mbarrier.arrive(a.v_empty.index(v_slot))
""", """                acc = warpgroup_mma_wait(0, deps=(acc, ))
                _fstamp(a, i, WG, 6)
                mbarrier.arrive(a.v_empty.index(v_slot))
""")
sub("""                gl.store(a.Lse + _row_stats(a, box_batch, head, q_start) + rows, lse, mask=rows < seqlen_q)
""", """                gl.store(a.Lse + _row_stats(a, box_batch, head, q_start) + rows, lse, mask=rows < seqlen_q)
                _fstamp(a, i, WG, 7)
""")
sub("""                              PLAIN_LOOP: gl.constexpr, MASK_FIRST: gl.constexpr):""",
    """                              PLAIN_LOOP: gl.constexpr, MASK_FIRST: gl.constexpr, Prof, PROFILE: gl.constexpr):""")
sub("""                    PLAIN_LOOP, MASK_FIRST)
        if CONSUMERS == 3:""", """                    PLAIN_LOOP, MASK_FIRST, Prof, PROFILE)
        if CONSUMERS == 3:""")
sub("""        O_IN_Q=o_in_q(head_dim), FP8=descale is not None, MASK_FIRST=mask_first(head_dim), num_warps=4,""",
    """        O_IN_Q=o_in_q(head_dim), FP8=descale is not None, MASK_FIRST=mask_first(head_dim), num_warps=4,
        Prof=lse if PROF is None else PROF, PROFILE=PROF is not None,""")
sub("def values_transposed(", "PROF = None\n\n\ndef values_transposed(")
open(p, "w").write(s)
print("ok")
