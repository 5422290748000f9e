"""Compile the Gluon forward locally (fake sm_90 driver): smem, ptxas registers/spills/warnings, SASS size.
usage: python fwd_compile.py D,dtype,mask[,varlen] ...   mask: none|causal|window"""
import sys, os, re, subprocess, tempfile
sys.path.insert(0, os.path.dirname(__file__))
import compile_local
compile_local.install()
import torch, triton
if os.environ.get("BASE"):
    sys.path.insert(0, "experiments/base28")
    from flashtron_base.kernels import hopper_forward as hf
else:
    from flashtron.kernels import hopper_forward as hf
    hf.MASK_FIRST = bool(os.environ.get("MF"))


def build(head_dim, dtype, fp8, mask, varlen):
    B, S, H = 2, 4096, 4
    q = torch.empty(B, S, H, head_dim, dtype=dtype)
    k = torch.empty(B, S, H, head_dim, dtype=dtype)
    v = torch.empty(B, S, H, head_dim, dtype=dtype)
    out = torch.empty(B, S, H, head_dim, dtype=torch.bfloat16 if fp8 else dtype)
    lse = torch.empty(B, H, S, dtype=torch.float32)
    keys = int(os.environ.get("KEYS", 0)) or hf.BLOCK_N[head_dim]
    q_box, kv_box = (1, hf.ROWS, head_dim), (1, keys, head_dim)
    q_desc, o_desc = hf.descriptor(q, q_box), hf.descriptor(out, q_box)
    k_desc = hf.descriptor(k, kv_box)
    if fp8:
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
        vt = torch.empty(B, H * head_dim, S, dtype=dtype)
        box = [1, head_dim, keys]
        v_desc = TensorDescriptor(vt, [B, H * head_dim, S], [H * head_dim * S, S, 1], box,
                                  hf._box_layout(tuple(box), dtype))
        descale = torch.empty(3, B, H)
    else:
        v_desc = hf.descriptor(v, kv_box)
        descale = None
    cu = torch.zeros(B + 1, dtype=torch.int32) if varlen else lse
    wl, wr = {"none": (-1, -1), "causal": (-1, 0), "window": (1024, 0)}[mask]
    consumers = int(os.environ.get("CONSUMERS", 0)) or hf.consumer_count(head_dim, wl, wr, (1,) if varlen else None, S, S)
    extra0 = hf._key_order(head_dim, wl, wr, (1,) if varlen else None, int(os.environ.get("SK", S)), consumers) if hasattr(hf, "_key_order") else {}
    extra = dict(Q_RING=hf.q_ring(head_dim), O_TILES=hf.q_ring(head_dim) > 1) if hasattr(hf, "q_ring") else dict(O_IN_Q=hf.o_in_q(head_dim))
    return hf.hopper_forward_kernel.warmup(
        q_desc, k_desc, v_desc, o_desc, out, lse, lse.stride(0), cu, cu, H, 1, S, S, 8, 64,
        0.1, max(wl, 0), max(wr, 0), lse if descale is None else descale, 0 if descale is None else descale.stride(0),
        lse, HAS_LEFT=wl >= 0, HAS_RIGHT=wr >= 0, K_RING=hf.K_STAGES, V_RING=hf.V_STAGES,
        CONSUMERS=consumers, CONSUMER_REGS=hf.CONSUMER_REGISTERS[consumers], ACROSS_HEADS=False,
        VARLEN=varlen, FP8=fp8, num_warps=4, grid=(1,), **extra, **extra0)


for spec in sys.argv[1:]:
    parts = spec.split(",")
    d, dt, mask = parts[:3]
    varlen = len(parts) > 3
    dtype = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[dt]
    c = build(int(d), dtype, dt == "fp8", mask, varlen)
    info = compile_local.ptxas_info(c)
    spills = re.findall(r"(\d+) bytes spill stores", info)
    regs = re.findall(r"Used (\d+) registers", info)
    warns = [l.strip()[:140] for l in info.splitlines() if "warning" in l.lower()]
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    with tempfile.TemporaryDirectory() as t:
        open(f"{t}/k.ptx", "w").write(c.asm["ptx"])
        subprocess.run([ptxas, "--gpu-name=sm_90a", f"{t}/k.ptx", "-o", f"{t}/k.cubin"], check=True,
                       capture_output=True)
        sass = subprocess.run([os.path.join(os.path.dirname(ptxas), "cuobjdump"), "-sass", f"{t}/k.cubin"],
                              capture_output=True, text=True).stdout
    if os.environ.get("SASS_OUT"):
        open(os.environ["SASS_OUT"] + "." + spec.replace(",", "_") + ".sass", "w").write(sass)
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
    n_wgmma = sum(1 for o in ops if o.startswith("HGMMA") or o.startswith("QGMMA"))
    print(f"{spec:24s} smem {c.metadata.shared:6d} regs {regs} spill {spills} sass {len(ops)} gmma {n_wgmma}"
          f" warns {warns}")
