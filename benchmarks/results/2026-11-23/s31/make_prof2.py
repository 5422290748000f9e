"""Turn flashtron_prof/kernels/hopper_backward.py into a build that stamps %globaltimer at a tile's events into
PROF (module global: int64 tensor), for session 31's per-tile time split."""
import re
p = "flashtron_prof/kernels/hopper_backward.py"
s = open(p).read()

def sub(old, new, count=1):
    global s
    assert s.count(old) >= 1, old
    s = s.replace(old, new, count)

# aggregate fields
sub("        VARLEN: gl.constexpr\n\n        @gluon.constexpr_function",
    "        VARLEN: gl.constexpr\n        Prof: gl.tensor\n        PROFILE: gl.constexpr\n\n        @gluon.constexpr_function")
sub("softmax_scale, window_left, window_right, HAS_LEFT, HAS_RIGHT, PERSISTENT, VARLEN):\n            self.q_desc",
    "softmax_scale, window_left, window_right, HAS_LEFT, HAS_RIGHT, PERSISTENT, VARLEN, Prof, PROFILE):\n"
    "            self.Prof = Prof\n            self.PROFILE = gl.constexpr(PROFILE)\n            self.q_desc")
# helpers after _ONE
sub("    @builtin\n    def _tma_reduce_add",
    '''    @gluon.jit
    def _put(a, i, role, slot, value):
        if a.PROFILE:
            idx = ((gl.program_id(0) * 40 + gl.minimum(i, 39)) * 3 + role) * 24 + slot
            v = gl.full([1], 0, gl.int64, layout=_ONE) + value
            gl.store(a.Prof + idx + gl.zeros([1], gl.int32, layout=_ONE), v)

    @gluon.jit
    def _now():
        x = gl.full([1], 0, gl.int64, layout=_ONE)
        return gl.sum(gl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,l", [x], dtype=gl.int64,
                                                is_pure=False, pack=1), axis=0)

    @gluon.jit
    def _stamp(a, i, role, slot):
        if a.PROFILE:
            _put(a, i, role, slot, _now())

    @builtin
    def _tma_reduce_add''')
# producer: stamp hand-over and K/V issue
sub("            while tile < a.num_tiles:\n                _hand_over(a, i, tile)\n",
    "            while tile < a.num_tiles:\n                _hand_over(a, i, tile)\n                _put(a, i, 2, 0, tile)\n                _stamp(a, i, 2, 1)\n")
sub("                steps = _producer_tile(a, tile, done, loaded)\n",
    "                steps = _producer_tile(a, tile, done, loaded, i)\n")
sub("            _producer_tile(a, gl.program_id(0), 0, 0)", "            _producer_tile(a, gl.program_id(0), 0, 0, 0)")
sub("    def _producer_tile(a, tile, done, loaded):", "    def _producer_tile(a, tile, done, loaded, i):")
sub("                if a.PERSISTENT:  # the consumers are done with the previous K and V\n                    mbarrier.wait(a.kv_empty, (loaded & 1) ^ 1)\n",
    "                if a.PERSISTENT:  # the consumers are done with the previous K and V\n                    mbarrier.wait(a.kv_empty, (loaded & 1) ^ 1)\n                _stamp(a, i, 2, 2)\n")
# consumer
sub("                if live:\n                    steps = _consumer_tile(a, WG, tile, done, loaded)\n",
    "                if live:\n                    _put(a, i, WG, 0, tile)\n                    _stamp(a, i, WG, 1)\n                    steps = _consumer_tile(a, WG, tile, done, loaded, i)\n")
sub("            _consumer_tile(a, WG, gl.program_id(0), 0, 0)\n",
    "            _put(a, 0, WG, 0, gl.program_id(0))\n            _stamp(a, 0, WG, 1)\n            _consumer_tile(a, WG, gl.program_id(0), 0, 0, 0)\n")
sub("    def _consumer_tile(a, WG: gl.constexpr, tile, done, loaded):", "    def _consumer_tile(a, WG: gl.constexpr, tile, done, loaded, i):")
sub("            tma.store_wait(0)  # the previous tile's dV box has read P's tile\n        for local_step in range(steps):",
    "            tma.store_wait(0)  # the previous tile's dV box has read P's tile\n        _stamp(a, i, WG, 2)\n        _put(a, i, WG, 23, steps)\n        for local_step in range(steps):")
sub("                            a.dq_smem.index(WG))\n        if a.PERSISTENT:\n            if steps > 0:  # every matmul",
    "                            a.dq_smem.index(WG))\n            if local_step < 18:\n                _stamp(a, i, WG, 3 + local_step)\n        _stamp(a, i, WG, 21)\n        if a.PERSISTENT:\n            if steps > 0:  # every matmul")
sub("            _store_rows(a.DV, dv_out, first_row, head_kv, first_key, num_heads_kv, seqlen_k)\n        return steps",
    "            _store_rows(a.DV, dv_out, first_row, head_kv, first_key, num_heads_kv, seqlen_k)\n        _stamp(a, i, WG, 22)\n        return steps")
# kernel signature and launch
sub("VARLEN: gl.constexpr, RING: gl.constexpr, CONSUMER_REGS: gl.constexpr):",
    "VARLEN: gl.constexpr, RING: gl.constexpr, CONSUMER_REGS: gl.constexpr, Prof, PROFILE: gl.constexpr):")
sub("softmax_scale, window_left, window_right, HAS_LEFT, HAS_RIGHT, PERSISTENT, VARLEN)\n        gl.warp_specialize",
    "softmax_scale, window_left, window_right, HAS_LEFT, HAS_RIGHT, PERSISTENT, VARLEN, Prof, PROFILE)\n        gl.warp_specialize")
sub("        RING=STAGES[head_dim], CONSUMER_REGS=CONSUMER_REGISTERS, num_warps=4)",
    "        RING=STAGES[head_dim], CONSUMER_REGS=CONSUMER_REGISTERS, Prof=lse if PROF is None else PROF,\n        PROFILE=PROF is not None, num_warps=4)")
sub("def _persistent(window_left: int) -> bool:", "PROF = None\n\n\ndef _persistent(window_left: int) -> bool:")
open(p, "w").write(s)
print("ok")
