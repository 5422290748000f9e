"""(Session 31's copy of s29/bc.py: more switches, the working tree first on sys.path.)
Compile the backward through its host function for sm_90 (no GPU); print smem, regs, spills, SASS size.
usage: python bc.py D,mask[,varlen] ...  mask none|causal|window
env: KOR=0/1 overrides KEYS_ON_ROWS[64], DQ_UNDER_DK=0/1; SASS_OUT / PTX_OUT prefixes dump SASS / PTX and TTGIR;
WARN=1 prints ptxas's warnings."""
import os, sys, collections, subprocess, tempfile
sys.path.insert(0, os.path.join("benchmarks/results/2026-11-23/s28")); sys.path.insert(0, "tests")
# The working tree first: a clean-clone CI run (`pip install -e .` in its clone) repoints the installed package,
# and this script's own folder comes first on sys.path (session 31 compiled the clone's code for a while).
sys.path.insert(0, os.getcwd())
# compile_local (ptxas -v on the PTX) is session 28's; the driver and compile-only launches are tests/gluon_compile's.
import torch, triton
import gluon_compile as gc
import compile_local
from flashtron.kernels import hopper_backward as hb
for _n in ("DQ_UNDER_DK", "DQ_FIRST", "PREFETCH_KV", "EARLY_KV", "LATE_TAKE", "DEFER_BOXES"):
    if _n in os.environ:
        setattr(hb, _n, bool(int(os.environ[_n])))
if "KOR" in os.environ and hasattr(hb, "KEYS_ON_ROWS"):
    hb.KEYS_ON_ROWS[64] = bool(int(os.environ["KOR"]))
compiled = gc._install(hb, ["attention_backward_preprocess", "hopper_backward_kernel",
                                "attention_backward_postprocess"])

def sass_stats(kernel):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
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
    p = spec.split(",")
    d, mask, varlen = int(p[0]), p[1], len(p) > 2
    window = {"none": (-1, -1), "causal": (-1, 0), "window": (1024, 0)}[mask]
    B, S, H = 2, 2048, 2
    q, dout, out = (gc._tensors((B, S, H, d)) for _ in range(3))
    k, v = (gc._tensors((B, S, H, d)) for _ in range(2))
    lse, ragged = torch.empty(B, H, S), None
    if varlen:
        q, dout, out, k, v = (t.reshape(1, -1, *t.shape[2:]) for t in (q, dout, out, k, v))
        lse = torch.empty(H, B * S)
        cu = torch.arange(0, B + 1, dtype=torch.int32) * S
        ragged = (cu, cu, S, S)
    delta = torch.empty_like(lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    n = len(compiled)
    hb.backward(dout, q, k, v, out, lse, delta, dq, dk, dv, d ** -0.5, *window, ragged)
    c = [x for x in compiled[n:] if x.name == "hopper_backward_kernel"][0]
    info = compile_local.ptxas_info(c)
    ops, sass = sass_stats(c)
    if os.environ.get("SASS_OUT"):
        open(os.environ["SASS_OUT"] + f".{d}.{mask}.sass", "w").write(sass)
    print(spec, "smem", c.metadata.shared,
          [l.split(":")[-1].strip() for l in info.splitlines() if "spill" in l or "Used" in l][:6])
    print("   total", sum(ops.values()), "|", ", ".join(f"{k} {v}" for k, v in ops.most_common(10)))
    if os.environ.get("WARN"):
        print("\n".join(l for l in info.splitlines() if "arning" in l or "erformance" in l))
    if os.environ.get("PTX_OUT"):
        open(os.environ["PTX_OUT"] + f".{d}.{mask}.ptx", "w").write(c.asm["ptx"])
        open(os.environ["PTX_OUT"] + f".{d}.{mask}.ttgir", "w").write(c.asm["ttgir"])
