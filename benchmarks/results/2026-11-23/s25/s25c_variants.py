"""Session 25 (c): builds the timing-only backward variants that s25c.py times, from a copy of HEAD's package at
experiments/base25/flashtron_base (git archive HEAD flashtron, renamed).  Run from the repository root's
experiments/ folder.  Each variant changes one thing in kernels/hopper_backward.py (gradients are wrong)."""
import os
import shutil

SRC = "base25/flashtron_base"
REDUCE = """            _tma_reduce_add(a.dq_desc, [box_batch, q_start + m_block * ROWS, head * HEAD_DIM + FIRST_COL],
                            a.dq_smem.index(WG))"""
DQ = """                dq = warpgroup_mma(ds_tile, k_tile, gl.zeros([ROWS, DQ_COLS], gl.float32, layout=dq_layout),
                                   use_acc=False, is_async=True)"""
EXP = """                p = gl.exp2(s * a.qk_scale_log2 - lse[:, None])"""
VARIANTS = {
    "store": [(REDUCE, REDUCE.replace("_tma_reduce_add(", "tma.async_copy_shared_to_global("))],
    "noout": [(REDUCE, "            pass")],
    "noexp": [(EXP, EXP.replace("gl.exp2(s * a.qk_scale_log2 - lse[:, None])", "s * a.qk_scale_log2 - lse[:, None]"))],
    "nodq": [(REDUCE, "            pass"),
             (DQ, "                dq = gl.zeros([ROWS, DQ_COLS], gl.float32, layout=dq_layout)")],
}
for name, subs in VARIANTS.items():
    package = f"flashtron_v{name}"
    target = f"s25/pk_{name}/{package}"
    shutil.rmtree(f"s25/pk_{name}", ignore_errors=True)
    shutil.copytree(SRC, target)
    for root, _, files in os.walk(target):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                text = open(path).read()
                open(path, "w").write(text.replace("flashtron_base", package))
    path = f"{target}/kernels/hopper_backward.py"
    text = open(path).read()
    for old, new in subs:
        assert old in text, (name, old[:40])
        text = text.replace(old, new)
    open(path, "w").write(text)
