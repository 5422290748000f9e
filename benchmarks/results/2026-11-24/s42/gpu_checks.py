"""Session 42: the MHA non-causal decoding step and the new xFormers padded-keys band, on the GPU."""
import torch
from flashtron.modules import MHA, InferenceParams
import flashtron.xformers as xf
from flashtron.xformers import attn_bias as xb

torch.manual_seed(int(torch.randint(0, 2**31, ())))
for dim in (8, 16):
    mha = MHA(96, 3, causal=False, rotary_emb_dim=dim, layer_idx=0, device="cuda", dtype=torch.float16).eval()
    x = torch.randn(2, 9, 96, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        full = mha(x)
        params = InferenceParams(max_seqlen=12, max_batch_size=2)
        mha(x[:, :6], inference_params=params)
        params.seqlen_offset = 6
        step = mha(x[:, 6:], inference_params=params)
    print("MHA rotary", dim, "step vs full max diff", (step - full[:, 6:]).abs().max().item())
q_len, pad, used = [3, 1, 5], 40, [17, 0, 33]
bias = xb.BlockDiagonalLocalAttentionPaddedKeysMask.from_seqlens_local(q_len, pad, used, 7, 2, device="cuda")
q = torch.randn(1, sum(q_len), 4, 64, device="cuda", dtype=torch.bfloat16)
k, v = (torch.randn(1, pad * 3, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
out = xf.memory_efficient_attention(q, k, v, attn_bias=bias)
m = bias.materialize((1, 4, sum(q_len), pad * 3), device="cuda")
s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 64 ** -0.5 + m.double()
empty = torch.isneginf(s).all(-1, keepdim=True)
p = torch.softmax(s.masked_fill(empty, 0), -1) * ~empty
ref = torch.einsum("bhqk,bkhd->bqhd", p, v.double())
print("xformers padded-keys band max err", (out.double() - ref).abs().max().item())
