"""Multi-head attention layers with flash-attn 2.x's constructor arguments and forward signatures.

`FlashSelfAttention` and `FlashCrossAttention` hold no weights: they turn a packed qkv, or q and a
packed kv, into the attention output, dense (batch, seqlen, ...) or variable-length (total, ...)
with cu_seqlens.  `MHA` adds the projections around them: one fused qkv projection (or q and kv
for cross-attention, or q and the narrower kv for GQA/MQA), rotary embeddings
(`flashtron.rotary`), ALiBi, sliding windows, an optional depthwise convolution, and the output
projection.  Padded batches with a `key_padding_mask` are unpacked to the variable-length form
(`flashtron.bert_padding`), so padding costs no attention work; decoding with an
`InferenceParams` writes each layer's keys and values into a per-layer cache and, after the
prompt, attends through `flashtron.flash_attn_with_kvcache`.  flashtron always computes the
attention, so `use_flash_attn` and `fused_bias_fc` are accepted for compatibility and change
nothing (the projections are torch.nn.Linear).
"""

import dataclasses
import math
from typing import Optional

import torch
from torch import nn

from flashtron import bert_padding
from flashtron.interface import (flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                                 flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func)

__all__ = ["MHA", "FlashSelfAttention", "FlashCrossAttention", "InferenceParams", "get_alibi_slopes"]


def get_alibi_slopes(num_heads: int) -> list:
    """ALiBi's per-head slopes (Press et al.): a geometric sequence starting at 2 ** (-8 / n) for n a
    power of two; otherwise the slopes of the power of two below, then every other slope of the
    power of two above."""
    def geometric(n):
        first = 2.0 ** (-8.0 / n)
        return [first ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return geometric(num_heads)
    below = 2 ** math.floor(math.log2(num_heads))
    return geometric(below) + get_alibi_slopes(2 * below)[0::2][:num_heads - below]


@dataclasses.dataclass
class InferenceParams:
    """The decoding state shared by the layers of a model (flash-attn's `InferenceParams`).

    key_value_memory_dict maps a layer_idx to its cache (max_batch_size, max_seqlen, 2, nheads_kv,
    head_dim).  seqlen_offset is the number of tokens already in the cache (0 for the prompt);
    lengths_per_sample, an int32 (batch,) tensor, overrides it per sequence.
    """

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = dataclasses.field(default_factory=dict)
    lengths_per_sample: Optional[torch.Tensor] = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


def _require_lengths(cu_name, cu_seqlens, max_name, max_seqlen):
    if cu_seqlens is not None and max_seqlen is None:
        raise ValueError(f"{max_name} (an int, the longest sequence) is required with {cu_name}")


class _AttentionCore(nn.Module):
    """What FlashSelfAttention and FlashCrossAttention share: the settings of the attention call."""

    def __init__(self, causal, softmax_scale, attention_dropout, window_size, alibi_slopes, deterministic):
        super().__init__()
        self.causal = causal
        self.softmax_scale = softmax_scale
        self.drop = nn.Dropout(attention_dropout)
        self.window_size = tuple(window_size)
        self.deterministic = deterministic
        self.register_buffer("alibi_slopes", alibi_slopes, persistent=False)

    def _settings(self, causal):
        """Keyword arguments of the flashtron call; dropout only in training mode."""
        slopes = None if self.alibi_slopes is None else self.alibi_slopes.to(torch.float32)
        return dict(dropout_p=self.drop.p if self.training else 0.0, softmax_scale=self.softmax_scale,
                    causal=self.causal if causal is None else causal, window_size=self.window_size,
                    alibi_slopes=slopes, deterministic=self.deterministic)

    def extra_repr(self):
        return (f"causal={self.causal}, softmax_scale={self.softmax_scale}, window_size={self.window_size}, "
                f"alibi={self.alibi_slopes is not None}")


class FlashSelfAttention(_AttentionCore):
    """softmax(q k^T * softmax_scale) v from a packed qkv.

    attention_dropout applies in training mode only; window_size, alibi_slopes ((H,) or (B, H)) and
    deterministic are flashtron's flash_attn_func arguments.
    """

    def __init__(self, causal=False, softmax_scale=None, attention_dropout=0.0, window_size=(-1, -1),
                 alibi_slopes=None, deterministic=False):
        super().__init__(causal, softmax_scale, attention_dropout, window_size, alibi_slopes, deterministic)

    def forward(self, qkv, causal=None, cu_seqlens=None, max_seqlen=None):
        """qkv: (B, S, 3, H, D), or (total, 3, H, D) with cu_seqlens (int32 (B + 1,)) and max_seqlen.
        causal overrides the module's.  Returns (B, S, H, D), or (total, H, D)."""
        settings = self._settings(causal)
        if cu_seqlens is None:
            return flash_attn_qkvpacked_func(qkv, **settings)
        _require_lengths("cu_seqlens", cu_seqlens, "max_seqlen", max_seqlen)
        return flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, **settings)


class FlashCrossAttention(_AttentionCore):
    """softmax(q k^T * softmax_scale) v from q and a packed kv (GQA/MQA when kv has fewer heads).

    Causal masks align to the bottom-right corner when Sq != Sk, as in flash_attn_func.
    """

    def __init__(self, causal=False, softmax_scale=None, attention_dropout=0.0, alibi_slopes=None,
                 window_size=(-1, -1), deterministic=False):
        super().__init__(causal, softmax_scale, attention_dropout, window_size, alibi_slopes, deterministic)

    def forward(self, q, kv, causal=None, cu_seqlens=None, max_seqlen=None, cu_seqlens_k=None, max_seqlen_k=None):
        """q: (B, Sq, H, D), kv: (B, Sk, 2, Hk, D); or q (total_q, H, D) and kv (total_k, 2, Hk, D) with
        cu_seqlens / max_seqlen for q and cu_seqlens_k / max_seqlen_k for kv.  Returns q's shape."""
        settings = self._settings(causal)
        if cu_seqlens is None and cu_seqlens_k is None:
            return flash_attn_kvpacked_func(q, kv, **settings)
        if cu_seqlens is None or cu_seqlens_k is None:
            raise ValueError("cu_seqlens and cu_seqlens_k must be given together (variable-length q and kv)")
        _require_lengths("cu_seqlens", cu_seqlens, "max_seqlen", max_seqlen)
        _require_lengths("cu_seqlens_k", cu_seqlens_k, "max_seqlen_k", max_seqlen_k)
        return flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens, cu_seqlens_k, max_seqlen, max_seqlen_k, **settings)


def _update_kv_cache(kv, inference_params, layer_idx):
    """Write kv (B, S, 2, Hk, D) at [batch_size_offset:, seqlen_offset:] of the layer's cache (allocated on
    first use) and return the cache's filled part (B, seqlen_offset + S, 2, Hk, D)."""
    cache = inference_params.key_value_memory_dict.get(layer_idx)
    if cache is None:
        cache = torch.empty(inference_params.max_batch_size, inference_params.max_seqlen, *kv.shape[2:],
                            dtype=kv.dtype, device=kv.device)
        inference_params.key_value_memory_dict[layer_idx] = cache
    batch_start, seq_start = inference_params.batch_size_offset, inference_params.seqlen_offset
    batch_end, seq_end = batch_start + kv.shape[0], seq_start + kv.shape[1]
    if batch_end > cache.shape[0] or seq_end > cache.shape[1]:
        raise ValueError(f"the KV cache of layer {layer_idx} holds {tuple(cache.shape[:2])} (batch, seqlen), too "
                         f"small for batch rows up to {batch_end} and positions up to {seq_end}")
    cache[batch_start:batch_end, seq_start:seq_end] = kv
    return cache[batch_start:batch_end, :seq_end]


class MHA(nn.Module):
    """Multi-head self- or cross-attention with input and output projections (flash-attn's MHA).

    embed_dim = num_heads * head_dim; num_heads_kv (default num_heads) divides num_heads (GQA/MQA).
    cross_attn: keys and values come from x_kv.  rotary_emb_dim > 0 rotates the first rotary_emb_dim
    columns of each q and k head (base, xPos scale_base, interleaved as in RotaryEmbedding).  use_alibi
    adds ALiBi with get_alibi_slopes(num_heads); window_size is a sliding window; dropout is the
    attention dropout; dwconv applies a causal depthwise convolution (kernel 3) to the projections;
    return_residual also returns the input; checkpointing recomputes the attention in the backward.
    layer_idx names the layer's cache in InferenceParams.key_value_memory_dict.
    """

    def __init__(self, embed_dim, num_heads, num_heads_kv=None, cross_attn=False, qkv_proj_bias=True,
                 out_proj_bias=True, dropout=0.0, softmax_scale=None, causal=False, layer_idx=None, dwconv=False,
                 rotary_emb_dim=0, rotary_emb_base=10000.0, rotary_emb_scale_base=None, rotary_emb_interleaved=False,
                 use_alibi=False, window_size=(-1, -1), fused_bias_fc=False, use_flash_attn=False,
                 return_residual=False, checkpointing=False, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        num_heads_kv = num_heads if num_heads_kv is None else num_heads_kv
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        if num_heads_kv < 1 or num_heads % num_heads_kv != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_heads_kv ({num_heads_kv})")
        if cross_attn and rotary_emb_dim > 0:
            raise ValueError("rotary_emb_dim > 0 needs self-attention (cross_attn=False): the keys of x_kv "
                             "have no positions relative to the queries")
        self.embed_dim, self.num_heads, self.num_heads_kv = embed_dim, num_heads, num_heads_kv
        self.head_dim = embed_dim // num_heads
        self.cross_attn, self.causal, self.layer_idx = cross_attn, causal, layer_idx
        self.dwconv, self.rotary_emb_dim = dwconv, rotary_emb_dim
        self.use_flash_attn, self.return_residual, self.checkpointing = use_flash_attn, return_residual, checkpointing
        self.rotary_emb = None
        if rotary_emb_dim > 0:
            from flashtron.rotary import RotaryEmbedding
            self.rotary_emb = RotaryEmbedding(rotary_emb_dim, base=rotary_emb_base, scale_base=rotary_emb_scale_base,
                                              interleaved=rotary_emb_interleaved, device=device)
        alibi_slopes = (torch.tensor(get_alibi_slopes(num_heads), device=device, dtype=torch.float32)
                        if use_alibi else None)
        qkv_dim = self.head_dim * (num_heads + 2 * num_heads_kv)
        kv_dim = 2 * self.head_dim * num_heads_kv
        if cross_attn:
            self.Wq = nn.Linear(embed_dim, embed_dim, bias=qkv_proj_bias, **factory_kwargs)
            self.Wkv = nn.Linear(embed_dim, kv_dim, bias=qkv_proj_bias, **factory_kwargs)
        else:
            self.Wqkv = nn.Linear(embed_dim, qkv_dim, bias=qkv_proj_bias, **factory_kwargs)
        if dwconv:
            def depthwise(channels):
                return nn.Conv1d(channels, channels, kernel_size=3, padding=2, groups=channels, **factory_kwargs)
            if cross_attn:
                self.dwconv_q, self.dwconv_kv = depthwise(embed_dim), depthwise(kv_dim)
            else:
                self.dwconv_qkv = depthwise(qkv_dim)
        attention = dict(causal=causal, softmax_scale=softmax_scale, attention_dropout=dropout,
                         alibi_slopes=alibi_slopes, window_size=window_size)
        self.inner_attn = FlashSelfAttention(**attention)
        self.inner_cross_attn = FlashCrossAttention(**attention)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=out_proj_bias, **factory_kwargs)

    # -- inference -------------------------------------------------------------------------------

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None):
        """An empty cache (batch_size, max_seqlen, 2, num_heads_kv, head_dim) for this layer."""
        dtype = self.out_proj.weight.dtype if dtype is None else dtype
        return torch.empty(batch_size, max_seqlen, 2, self.num_heads_kv, self.head_dim, dtype=dtype,
                           device=self.out_proj.weight.device)

    def _cached_attention(self, q, kv, inference_params, rotate):
        """Attention of q (B, S, H, D) against the cached keys and values plus kv (B, S, 2, Hk, D).

        The prompt (seqlen_offset 0) is written into the cache and attended densely; later tokens go
        through flash_attn_with_kvcache, which appends them and, when `rotate`, applies the rotary
        embedding to q and the new keys at their positions."""
        layer_idx = self.layer_idx
        if layer_idx is None:
            raise ValueError("MHA needs a layer_idx (constructor argument) to decode with inference_params")
        core = self.inner_cross_attn
        if inference_params.seqlen_offset == 0:
            return core(q, _update_kv_cache(kv, inference_params, layer_idx))
        from flashtron import flash_attn_with_kvcache
        batch = q.shape[0]
        cache = inference_params.key_value_memory_dict[layer_idx][:batch]
        cache_seqlens = (inference_params.lengths_per_sample[:batch]
                         if inference_params.lengths_per_sample is not None else inference_params.seqlen_offset)
        rotary = {}
        if rotate:
            self.rotary_emb._update_cos_sin_cache(inference_params.max_seqlen, device=q.device, dtype=q.dtype)
            rotary = dict(rotary_cos=self.rotary_emb._cos_cached, rotary_sin=self.rotary_emb._sin_cached,
                          rotary_interleaved=self.rotary_emb.interleaved)
        settings = core._settings(None)
        return flash_attn_with_kvcache(q, cache[:, :, 0], cache[:, :, 1], kv[:, :, 0], kv[:, :, 1],
                                       cache_seqlens=cache_seqlens, softmax_scale=settings["softmax_scale"],
                                       causal=settings["causal"], window_size=settings["window_size"],
                                       alibi_slopes=settings["alibi_slopes"], **rotary)

    # -- forward ---------------------------------------------------------------------------------

    @staticmethod
    def _depthwise(conv, t):
        # causal along the sequence: padding 2 on both sides, keep the first S outputs
        return conv(t.transpose(-1, -2))[..., :-2].transpose(-1, -2).contiguous()

    def _checkpointed(self, fn, *args, **kwargs):
        if self.checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    def _attend_padded(self, q, kv, qkv, key_padding_mask, kwargs):
        """Self-attention on a padded batch: drop the padding, attend per sequence, pad with zeros;
        cross-attention: drop the padded keys only."""
        batch, seqlen_q = (qkv if qkv is not None else q).shape[:2]
        if qkv is not None:
            packed, indices, cu_seqlens, max_seqlen, _ = bert_padding.unpad_input(qkv, key_padding_mask)
            out = self._checkpointed(self.inner_attn, packed, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, **kwargs)
            return bert_padding.pad_input(out, indices, batch, seqlen_q)
        kv_packed, _, cu_seqlens_k, max_seqlen_k, _ = bert_padding.unpad_input(kv, key_padding_mask)
        if self.cross_attn:
            q_packed = q.reshape(batch * seqlen_q, *q.shape[2:])
            cu_seqlens = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, dtype=torch.int32, device=q.device)
            out = self._checkpointed(self.inner_cross_attn, q_packed, kv_packed, cu_seqlens=cu_seqlens,
                                     max_seqlen=seqlen_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
                                     **kwargs)
            return out.reshape(batch, seqlen_q, *out.shape[1:])
        q_packed, indices, _, _, _ = bert_padding.unpad_input(q, key_padding_mask)
        out = self._checkpointed(self.inner_cross_attn, q_packed, kv_packed, cu_seqlens=cu_seqlens_k,
                                 max_seqlen=max_seqlen_k, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
                                 **kwargs)
        return bert_padding.pad_input(out, indices, batch, seqlen_q)

    def forward(self, x, x_kv=None, key_padding_mask=None, cu_seqlens=None, max_seqlen=None, mixer_subset=None,
                inference_params=None, **kwargs):
        """x: (B, S, embed_dim), or (total, embed_dim) with cu_seqlens (int32 (B + 1,)) and max_seqlen.

        x_kv: the keys' and values' source for cross-attention (default x).  key_padding_mask: bool
        (B, S) (for cross-attention (B, S_kv)), True for real tokens; the output at padded positions
        is out_proj(0).  mixer_subset: the query positions to compute (cross-attention).
        inference_params: decode with a KV cache.  Other keyword arguments (causal) go to the inner
        attention.  Returns (B, S, embed_dim) (or (total, embed_dim)); with return_residual, (out, x).
        """
        if cu_seqlens is not None:
            _require_lengths("cu_seqlens", cu_seqlens, "max_seqlen", max_seqlen)
            if key_padding_mask is not None or inference_params is not None:
                raise ValueError("cu_seqlens (packed input) cannot be combined with key_padding_mask or "
                                 "inference_params")
            if self.dwconv or self.rotary_emb_dim > 0:
                raise NotImplementedError("dwconv and rotary embeddings need the padded (B, S, ...) layout; "
                                          "they are not supported with cu_seqlens")
        if inference_params is not None and (key_padding_mask is not None or self.dwconv):
            raise NotImplementedError("decoding with inference_params supports neither key_padding_mask nor dwconv")
        if mixer_subset is not None and not self.cross_attn:
            raise ValueError("mixer_subset is only supported with cross_attn=True")
        if x_kv is not None and not self.cross_attn:
            raise ValueError("x_kv is only used with cross_attn=True")
        seqlen_offset = 0
        rotary_max_seqlen = None
        if inference_params is not None:
            seqlen_offset = (inference_params.lengths_per_sample if inference_params.lengths_per_sample is not None
                             else inference_params.seqlen_offset)
            rotary_max_seqlen = inference_params.max_seqlen
        # Decoding after the prompt rotates inside flash_attn_with_kvcache where its positions are the tokens' own:
        # one new token, or causal (it puts every query of a non-causal step at the cache's length).  xPos scales
        # need the module's own tables, so they rotate here.
        rotate_in_cache = (inference_params is not None and inference_params.seqlen_offset > 0
                           and self.rotary_emb is not None and self.rotary_emb.scale is None
                           and (self.causal or x.shape[1] == 1))
        if cu_seqlens is not None:
            kwargs = dict(kwargs, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        residual = x
        qkv = q = kv = None
        if not self.cross_attn:
            qkv = self.Wqkv(x)
            if self.dwconv:
                qkv = self._depthwise(self.dwconv_qkv, qkv)
            if self.num_heads_kv == self.num_heads:
                qkv = qkv.unflatten(-1, (3, self.num_heads, self.head_dim))
            else:
                q = qkv[..., :self.num_heads * self.head_dim].unflatten(-1, (self.num_heads, self.head_dim))
                kv = qkv[..., self.num_heads * self.head_dim:].unflatten(-1, (2, self.num_heads_kv, self.head_dim))
                qkv = None
                if cu_seqlens is not None:
                    kwargs.update(cu_seqlens_k=cu_seqlens, max_seqlen_k=max_seqlen)
        else:
            q = self.Wq(x if mixer_subset is None else x[:, mixer_subset])
            kv = self.Wkv(x if x_kv is None else x_kv)
            if self.dwconv:
                q, kv = self._depthwise(self.dwconv_q, q), self._depthwise(self.dwconv_kv, kv)
            q = q.unflatten(-1, (self.num_heads, self.head_dim))
            kv = kv.unflatten(-1, (2, self.num_heads_kv, self.head_dim))
        if self.rotary_emb is not None and not rotate_in_cache:
            if qkv is not None:
                qkv = self.rotary_emb(qkv, seqlen_offset=seqlen_offset, max_seqlen=rotary_max_seqlen)
            else:
                q, kv = self.rotary_emb(q, kv, seqlen_offset=seqlen_offset, max_seqlen=rotary_max_seqlen)
        if inference_params is not None:
            if qkv is not None:
                q, kv = qkv[:, :, 0], qkv[:, :, 1:]
            context = self._cached_attention(q, kv, inference_params, rotate_in_cache)
        elif key_padding_mask is not None:
            context = self._attend_padded(q, kv, qkv, key_padding_mask, kwargs)
        elif qkv is not None:
            context = self._checkpointed(self.inner_attn, qkv, **kwargs)
        else:
            context = self._checkpointed(self.inner_cross_attn, q, kv, **kwargs)
        out = self.out_proj(context.flatten(-2))
        return (out, residual) if self.return_residual else out
