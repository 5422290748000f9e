import sys, os
sys.path.insert(0, "experiments/s21")
import compile_local
compile_local.install()
import torch
from flashtron.kernels import hopper_forward as hf
from flashtron.kernels import hardware

def build(head_dim, dtype, fp8, causal):
    B, S, H = 2, 1024, 4
    q = torch.empty(B, S, H, head_dim, dtype=dtype)
    k = torch.empty(B, S, H, head_dim, dtype=dtype)
    v = torch.empty(B, S, H, head_dim, dtype=dtype)
    out = torch.empty(B, S, H, head_dim, dtype=torch.bfloat16 if fp8 else dtype)
    lse = torch.empty(B, H, S, dtype=torch.float32)
    keys = hf.BLOCK_N[head_dim]
    q_box, kv_box = (1, hf.ROWS, head_dim), (1, keys, head_dim)
    q_desc, o_desc = hf.descriptor(q, q_box), hf.descriptor(out, q_box)
    k_desc = hf.descriptor(k, kv_box)
    if fp8:
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
        vt = torch.empty(B, H * head_dim, S, dtype=dtype)
        box = [1, head_dim, keys]
        v_desc = TensorDescriptor(vt, [B, H * head_dim, S], [H * head_dim * S, S, 1], box, hf._box_layout(tuple(box), dtype))
        descale = torch.empty(3, B, H)
    else:
        v_desc = hf.descriptor(v, kv_box)
        descale = None
    consumers = hf.consumer_count(head_dim, -1, 0 if causal else -1, None, S, S)
    compiled = hf.hopper_forward_kernel.warmup(q_desc, k_desc, v_desc, o_desc, out, lse, lse.stride(0), lse, lse, H, 1, S, S, 8, 64,
                          0.1, 0, 0, lse if descale is None else descale, 0 if descale is None else descale.stride(0),
                          HAS_LEFT=False, HAS_RIGHT=causal, K_RING=hf.K_STAGES, V_RING=hf.V_STAGES,
                          CONSUMERS=consumers, CONSUMER_REGS=hf.CONSUMER_REGISTERS[consumers], ACROSS_HEADS=False,
                          VARLEN=False, FP8=fp8, O_IN_Q=hf.o_in_q(head_dim, fp8), num_warps=4, grid=(1,))
    return compiled

for spec in sys.argv[1:]:
    d, dt, causal = spec.split(",")
    dtype = {"bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[dt]
    c = build(int(d), dtype, dt == "fp8", causal == "1")
    info = compile_local.ptxas_info(c)
    print(spec, "smem", c.metadata.shared, [l for l in info.splitlines() if "spill" in l or "Used" in l])
