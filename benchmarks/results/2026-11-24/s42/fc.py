"""Compile the FP8 Gluon forward (sm_90, no GPU) with and without the emulated exp2; ptxas and SASS counts."""
import collections, os, subprocess, sys, tempfile
sys.path.insert(0, "benchmarks/results/2026-11-23/s28"); sys.path.insert(0, "tests")
import torch, triton
import gluon_compile as gc
import compile_local
from flashtron.kernels import hopper_forward as hf
compiled = gc._install(hf, ["hopper_forward_kernel"])
from flashtron.kernels import transpose
transpose.keys_innermost_kernel = gc._CompileOnly(transpose.keys_innermost_kernel, compiled)

def sass_ops(kernel):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    out = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    ops = collections.Counter()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("/*") and "*/" in line:
            body = line.split("*/", 1)[1].strip().rstrip(";")
            if body and not body.startswith("/*"):
                op = body.split()[1] if body.startswith("@") else body.split()[0]
                ops[op.split(".")[0] + ("." + op.split(".")[1] if op.startswith("MUFU") else "")] += 1
    return ops

for emulate in (False, True):
    hf.FP8_EMULATED_EXP2 = emulate
    for window in ((-1, -1), (-1, 0)):
        batch, sq, sk, h, hk, d = 1, 4096, 4096, 4, 4, 128
        q = gc._tensors((batch, sq, h, d), torch.float8_e4m3fn)
        k, v = (gc._tensors((batch, sk, hk, d), torch.float8_e4m3fn) for _ in range(2))
        out = torch.empty(q.shape, dtype=torch.bfloat16); lse = torch.empty(batch, h, sq)
        hf._PLANS.clear()
        hf.forward(q, k, v, out, lse, d ** -0.5, *window, None, torch.ones(3, batch, hk))
        kern = [c for c in compiled if c.name == "hopper_forward_kernel"][-1]
        info = compile_local.ptxas_info(kern)
        ops = sass_ops(kern)
        print(emulate, window, [l for l in info.splitlines() if "spill" in l or "Used" in l],
              {k: ops[k] for k in ("MUFU.EX2", "FFMA", "FADD", "FMNMX", "SHF", "IMAD", "IADD3", "F2FP")}, sum(ops.values()), flush=True)
