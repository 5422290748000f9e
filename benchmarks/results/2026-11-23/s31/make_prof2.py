"""Session 31: make_prof.py for the committed code (fbbc942), whose backward moved three of the lines make_prof.py
patches: the same stamps, with those three patterns replaced (this is how this script was made; it ran as a full
copy).  Run from experiments/prof31 after copying the working tree's package there as flashtron_prof."""
import os

CHANGES = [
    ('sub("            mbarrier.wait(a.kv_full, loaded & 1)\\n        for local_step in range(steps):",',
     'sub("            tma.store_wait(0)  # the previous tile\'s dV box has read P\'s tile\\n        for local_step in range(steps):",'),
    ('    "            mbarrier.wait(a.kv_full, loaded & 1)\\n        _stamp(a, i, WG, 2)\\n        _put(a, i, WG, 23, steps)\\n        for local_step in range(steps):")',
     '    "            tma.store_wait(0)  # the previous tile\'s dV box has read P\'s tile\\n        _stamp(a, i, WG, 2)\\n        _put(a, i, WG, 23, steps)\\n        for local_step in range(steps):")'),
    ('sub("                            a.dq_smem.index(WG))\\n        dk_out =",',
     'sub("                            a.dq_smem.index(WG))\\n        if a.PERSISTENT:\\n            if steps > 0:  # every matmul",'),
    ('    "                            a.dq_smem.index(WG))\\n            if local_step < 18:\\n                _stamp(a, i, WG, 3 + local_step)\\n        _stamp(a, i, WG, 21)\\n        dk_out =")',
     '    "                            a.dq_smem.index(WG))\\n            if local_step < 18:\\n                _stamp(a, i, WG, 3 + local_step)\\n        _stamp(a, i, WG, 21)\\n        if a.PERSISTENT:\\n            if steps > 0:  # every matmul")'),
    ('sub("        if a.PERSISTENT:\\n            if steps > 0:  # every matmul that read K and V is complete, and V\'s tile is out\\n                mbarrier.arrive(a.kv_empty)\\n        return steps",',
     'sub("            _store_rows(a.DV, dv_out, first_row, head_kv, first_key, num_heads_kv, seqlen_k)\\n        return steps",'),
    ('    "        if a.PERSISTENT:\\n            if steps > 0:  # every matmul that read K and V is complete, and V\'s tile is out\\n                mbarrier.arrive(a.kv_empty)\\n        _stamp(a, i, WG, 22)\\n        return steps")',
     '    "            _store_rows(a.DV, dv_out, first_row, head_kv, first_key, num_heads_kv, seqlen_k)\\n        _stamp(a, i, WG, 22)\\n        return steps")'),
]
src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "make_prof.py")).read()
for old, new in CHANGES:
    assert src.count(old) == 1, old
    src = src.replace(old, new)
exec(compile(src, "make_prof.py (patched)", "exec"))
