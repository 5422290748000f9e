"""flashtron.modules (MHA, FlashSelfAttention, FlashCrossAttention) against plain PyTorch.

The reference recomputes each layer from its own weights with explicit einsums, a textbook rotary
embedding and the naive attention of tests/reference.py, once in float64 (the truth) and once in
float32 (the yardstick of flash-attn's rule); padded batches are computed one sequence at a time.
"""

import pytest
import torch

from flashtron.modules import MHA, FlashCrossAttention, FlashSelfAttention, InferenceParams, get_alibi_slopes
from reference import assert_within_rule, attention_reference


def _rotate(x, positions, rotary_dim, base=10000.0):
    """GPT-NeoX rotary embedding of the first rotary_dim columns of x (B, S, H, D), positions (S,)."""
    inv_freq = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = positions.double()[:, None] * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :].to(x.dtype), angles.sin()[:, None, :].to(x.dtype)
    half = rotary_dim // 2
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


def _project(mha, x, x_kv, dtype):
    """q (B, S, H, D), k and v (B, Sk, Hk, D) from the layer's weights, in dtype."""
    def linear(layer, t):
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return torch.nn.functional.linear(t.to(dtype), layer.weight.to(dtype), bias)

    heads, heads_kv, head_dim = mha.num_heads, mha.num_heads_kv, mha.head_dim
    if mha.cross_attn:
        q, kv = linear(mha.Wq, x), linear(mha.Wkv, x if x_kv is None else x_kv)
    else:
        qkv = linear(mha.Wqkv, x)
        q, kv = qkv[..., :heads * head_dim], qkv[..., heads * head_dim:]
    q = q.unflatten(-1, (heads, head_dim))
    k, v = kv.unflatten(-1, (2, heads_kv, head_dim)).unbind(2)
    if mha.rotary_emb_dim:
        positions = torch.arange(x.shape[1])
        q, k = _rotate(q, positions, mha.rotary_emb_dim), _rotate(k, positions, mha.rotary_emb_dim)
    return q, k, v


def reference_mha(mha, x, x_kv=None, key_padding_mask=None, dtype=torch.float64, window=(-1, -1), alibi=False):
    """The layer computed naively; with key_padding_mask, per sequence on its valid tokens (others 0)."""
    q, k, v = _project(mha, x, x_kv, dtype)
    upcast = dtype == torch.float64
    slopes = torch.tensor(get_alibi_slopes(mha.num_heads)) if alibi else None
    attend = dict(causal=mha.causal, upcast=upcast, window=window, alibi_slopes=slopes)
    if key_padding_mask is None:
        context = attention_reference(q, k, v, **attend)[0]
    else:
        context = torch.zeros_like(q)
        for b in range(x.shape[0]):
            keys = key_padding_mask[b]
            rows = keys if not mha.cross_attn else torch.ones(q.shape[1], dtype=torch.bool)
            context[b, rows] = attention_reference(q[b:b + 1, rows], k[b:b + 1, keys], v[b:b + 1, keys],
                                                   **attend)[0][0]
    bias = None if mha.out_proj.bias is None else mha.out_proj.bias.to(dtype)
    return torch.nn.functional.linear(context.flatten(-2), mha.out_proj.weight.to(dtype), bias)


def _check_layer(mha, x, x_kv=None, key_padding_mask=None, **reference_kwargs):
    """Output and the gradients of the inputs and of the qkv projection weight, within the rule."""
    inputs = [x] + ([x_kv] if x_kv is not None else [])
    weight = mha.Wq.weight if mha.cross_attn else mha.Wqkv.weight

    def run(fn):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        grads = torch.autograd.grad(out, leaves + [weight], grad_out.to(out.dtype))
        return out, grads

    grad_out = torch.randn(x.shape[0], x.shape[1], mha.embed_dim)
    ours = run(lambda x, x_kv=None: mha(x, x_kv=x_kv, key_padding_mask=key_padding_mask))
    truth, plain = (run(lambda x, x_kv=None, dtype=dtype: reference_mha(mha, x, x_kv, key_padding_mask, dtype,
                                                                         **reference_kwargs))
                    for dtype in (torch.float64, torch.float32))
    assert_within_rule("out", ours[0], truth[0], plain[0], 2)
    names = ["dx"] + (["dx_kv"] if x_kv is not None else []) + ["dWeight"]
    for name, g, g_truth, g_plain in zip(names, ours[1], truth[1], plain[1]):
        assert_within_rule(name, g, g_truth, g_plain, 3)


@pytest.mark.parametrize("num_heads_kv", [4, 2])
def test_self_attention_with_rotary(num_heads_kv):
    mha = MHA(48, 4, num_heads_kv=num_heads_kv, causal=True, rotary_emb_dim=8, layer_idx=0)
    _check_layer(mha, torch.randn(2, 13, 48))


def test_cross_attention_with_padded_keys_and_mqa():
    mha = MHA(32, 4, num_heads_kv=1, cross_attn=True, qkv_proj_bias=False)
    key_padding_mask = torch.ones(2, 11, dtype=torch.bool)
    key_padding_mask[0, 7:] = False
    _check_layer(mha, torch.randn(2, 6, 32), torch.randn(2, 11, 32), key_padding_mask=key_padding_mask)


@pytest.mark.parametrize("num_heads_kv", [4, 1])
def test_padded_batch_runs_per_sequence(num_heads_kv):
    mha = MHA(32, 4, num_heads_kv=num_heads_kv, causal=True)
    key_padding_mask = torch.ones(3, 9, dtype=torch.bool)
    key_padding_mask[0, :4] = False  # left padding
    key_padding_mask[1, 6:] = False  # right padding
    _check_layer(mha, torch.randn(3, 9, 32), key_padding_mask=key_padding_mask)


def test_alibi_and_window():
    mha = MHA(40, 5, use_alibi=True, window_size=(3, 2))
    _check_layer(mha, torch.randn(1, 12, 40), window=(3, 2), alibi=True)


def test_packed_cu_seqlens_equal_the_padded_batch():
    mha = MHA(32, 4, num_heads_kv=2, causal=True)
    lengths = [5, 1, 8]
    x = torch.randn(3, 8, 32)
    key_padding_mask = torch.arange(8)[None, :] < torch.tensor(lengths)[:, None]
    packed = x[key_padding_mask]
    cu_seqlens = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    out_packed = mha(packed, cu_seqlens=cu_seqlens, max_seqlen=8)
    out_padded = mha(x, key_padding_mask=key_padding_mask)
    torch.testing.assert_close(out_packed, out_padded[key_padding_mask], rtol=1e-5, atol=1e-5)
    truth = reference_mha(mha, x, key_padding_mask=key_padding_mask)[key_padding_mask]
    plain = reference_mha(mha, x, key_padding_mask=key_padding_mask, dtype=torch.float32)[key_padding_mask]
    assert_within_rule("out", out_packed, truth, plain, 2)


def test_inner_modules_dropout_only_in_training():
    qkv = torch.randn(2, 10, 3, 2, 16)
    layer = FlashSelfAttention(causal=True, attention_dropout=0.4)
    expected = attention_reference(*qkv.unbind(2), causal=True)[0]
    assert_within_rule("out", layer.eval()(qkv), expected, attention_reference(*qkv.unbind(2), causal=True,
                                                                                upcast=False)[0], 2)
    layer.train()
    torch.manual_seed(3)
    first = layer(qkv)
    torch.manual_seed(3)
    assert torch.equal(first, layer(qkv))
    assert not torch.allclose(first, expected.float())
    q, kv = torch.randn(2, 4, 4, 16), torch.randn(2, 9, 2, 2, 16)
    cross = FlashCrossAttention(causal=True, softmax_scale=0.2)
    expected = attention_reference(q, *kv.unbind(2), causal=True, softmax_scale=0.2)[0]
    plain = attention_reference(q, *kv.unbind(2), causal=True, softmax_scale=0.2, upcast=False)[0]
    assert_within_rule("cross out", cross(q, kv), expected, plain, 2)


def test_checkpointing_residual_and_dwconv():
    x = torch.randn(2, 7, 32)
    plain = MHA(32, 4, causal=True, dwconv=True)
    checkpointed = MHA(32, 4, causal=True, dwconv=True, checkpointing=True, return_residual=True)
    checkpointed.load_state_dict(plain.state_dict())
    out, residual = checkpointed(x)
    assert residual is x
    torch.testing.assert_close(out, plain(x))
    # dwconv: a causal depthwise convolution over the sequence, so position t sees tokens <= t only
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 3, 32)
    torch.testing.assert_close(plain(x2)[:, :4], plain(x)[:, :4])


@pytest.mark.parametrize("kind", ["mha", "gqa", "cross"])
def test_checkpointing_gradients(kind):
    """checkpointing=True (non-reentrant torch.utils.checkpoint) gives the plain module's gradients; the packed
    attention's backward unpacks its saved tensors once, as that mode requires."""
    torch.manual_seed(1)
    options = dict(gqa=dict(num_heads_kv=2), cross=dict(cross_attn=True), mha={})[kind]
    plain = MHA(32, 4, causal=kind != "cross", **options)
    checkpointed = MHA(32, 4, causal=kind != "cross", checkpointing=True, **options)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 7, 32, requires_grad=True)
    extra = dict(x_kv=torch.randn(2, 5, 32)) if kind == "cross" else {}
    grads = []
    for module in (plain, checkpointed):
        (module(x, **extra) * torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in module.parameters()])
        x.grad = None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_decoding_through_the_kv_cache_matches_the_full_sequence():
    torch.manual_seed(0)
    mha = MHA(48, 4, num_heads_kv=2, causal=True, rotary_emb_dim=12, layer_idx=3).eval()
    x = torch.randn(2, 9, 48)
    with torch.no_grad():
        full = mha(x)
        params = InferenceParams(max_seqlen=12, max_batch_size=2)
        prompt = mha(x[:, :5], inference_params=params)
        params.seqlen_offset = 5
        steps = []
        for t in range(5, 9):
            steps.append(mha(x[:, t:t + 1], inference_params=params))
            params.seqlen_offset += 1
    torch.testing.assert_close(prompt, full[:, :5], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 5:], rtol=1e-5, atol=1e-5)
    assert params.key_value_memory_dict[3].shape == (2, 12, 2, 2, 12)


@pytest.mark.parametrize("rotary_emb_dim", [8, 16])
def test_non_causal_decoding_steps_rotate_each_token_at_its_position(rotary_emb_dim):
    """A non-causal layer's step of several new tokens: each query rotated at its own position (flash-attn's MHA with
    its default use_flash_attn=False), so the step's rows equal the full sequence's last rows."""
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    mha = MHA(48, 3, causal=False, rotary_emb_dim=rotary_emb_dim, layer_idx=0).eval()
    x = torch.randn(2, 7, 48)
    with torch.no_grad():
        full = mha(x)
        params = InferenceParams(max_seqlen=9, max_batch_size=2)
        mha(x[:, :4], inference_params=params)
        params.seqlen_offset = 4
        step = mha(x[:, 4:], inference_params=params)
    torch.testing.assert_close(step, full[:, 4:], rtol=1e-5, atol=1e-5)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="num_heads"):
        MHA(30, 4)
    with pytest.raises(ValueError, match="num_heads_kv"):
        MHA(32, 4, num_heads_kv=3)
    with pytest.raises(ValueError, match="rotary_emb_dim"):
        MHA(32, 4, cross_attn=True, rotary_emb_dim=8)
    mha = MHA(32, 4)
    with pytest.raises(ValueError, match="max_seqlen"):
        mha(torch.randn(5, 32), cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="layer_idx"):
        mha(torch.randn(1, 3, 32), inference_params=InferenceParams(max_seqlen=4, max_batch_size=1))
    assert get_alibi_slopes(8)[0] == 0.5 and len(get_alibi_slopes(6)) == 6


def test_import_flashtron_loads_no_framework():
    """keras and transformers are optional: flashtron, its modules and the transformers bridge load without them."""
    import subprocess
    import sys
    code = ("import sys, flashtron, flashtron.modules, flashtron.sdpa, flashtron.integrations.transformers; "
            "loaded = [m for m in ('keras', 'transformers') if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)
