"""Compile the Gluon backward for sm_90 without a GPU; print smem, registers, spills, SASS size.
usage: python bwd_compile.py D,mask ...   mask in none|causal|window|both ; env PKG picks the package dir."""
import sys, os, subprocess, tempfile, collections
sys.path.insert(0, os.path.dirname(__file__))
import compile_local
compile_local.install()
import torch, triton
from flashtron.kernels import hopper_backward as hb, hopper_forward as hf


def build(head_dim, mask, varlen=False):
    B, S, H = 2, 1024, 4
    q = torch.empty(B, S, H, head_dim, dtype=torch.bfloat16)
    k, v, do, dk, dv = (torch.empty_like(q) for _ in range(5))
    lse = torch.empty(B, H, S, dtype=torch.float32)
    dq_accum = torch.empty(B, S, H, head_dim, dtype=torch.float32)
    box = (1, hb.ROWS, head_dim)
    q_desc, k_desc, v_desc, do_desc = (hf.descriptor(t, box) for t in (q, k, v, do))
    dq_desc = hf.descriptor(dq_accum, (1, hb.ROWS, head_dim if hb.DQ_BY_KEYS.get(head_dim) else head_dim // 2))
    dk_desc, dv_desc = hf.descriptor(dk, box), hf.descriptor(dv, box)
    left = mask in ("window", "both")
    right = mask in ("causal", "window", "both")
    persistent = left
    counter = torch.empty(1, dtype=torch.int32)
    cu = torch.empty(3, dtype=torch.int32)
    return hb.hopper_backward_kernel.warmup(
        q_desc, k_desc, v_desc, do_desc, dq_desc, dk_desc, dv_desc, counter, lse, lse, lse.stride(0), cu, cu, dk,
        dv, H, 1, S, S, 8, 64, 2, 0.1, 0.1, 256, 0,
        HAS_LEFT=left, HAS_RIGHT=right, PERSISTENT=persistent, VARLEN=varlen, RING=hb.STAGES[head_dim],
        CONSUMER_REGS=hb.CONSUMER_REGISTERS, num_warps=4, grid=(1,), **({'SKIP_INVISIBLE': hb._skip_invisible(256 if left else -1, 0 if right else -1)} if hasattr(hb, '_skip_invisible') else {}), **({'DEFER_DQ': hb.DEFER_DQ} if hasattr(hb, 'DEFER_DQ') else {}))


def sass_stats(kernel):
    cubin = kernel.asm["cubin"]
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    out = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    ops = collections.Counter()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("/*") and "*/" in line:
            body = line.split("*/", 1)[1].strip()
            if body and not body.startswith("/*"):
                op = body.split()[0]
                if op.startswith("@"):
                    op = body.split()[1]
                ops[op.split(".")[0]] += 1
    return ops, out


for spec in sys.argv[1:]:
    parts = spec.split(",")
    d, mask = int(parts[0]), parts[1]
    varlen = len(parts) > 2 and parts[2] == "varlen"
    c = build(d, mask, varlen)
    info = compile_local.ptxas_info(c)
    ops, sass = sass_stats(c)
    if os.environ.get("SASS_OUT"):
        open(os.environ["SASS_OUT"] + f".{d}.{mask}.sass", "w").write(sass)
    total = sum(ops.values())
    top = ", ".join(f"{k} {v}" for k, v in ops.most_common(12))
    print(spec, "smem", c.metadata.shared, [l.strip() for l in info.splitlines() if "spill" in l or "Used" in l][:6])
    print("   total", total, "|", top)
