"""Hugging Face Transformers: flashtron as the attention implementation "ftron".

`register()` adds two entries under one name: an attention function to transformers'
`AttentionInterface`, and a mask function to its `AttentionMaskInterface`, which decides what the
model hands the attention function.  In the common cases (plain causal or bidirectional
attention, with or without a cache) the mask is None when nothing is padded, else the 2-D padding
mask of the keys; the attention function then runs flash_attn_func (causal masks aligned
bottom-right, which is where a cache puts the queries) or drops the padding and runs
flash_attn_varlen_func, so padding costs no attention work.  Any other pattern (packed sequences
found from position_ids, sliding windows, chunked or custom masks, a static cache whose unused
slots follow the queries) gets the exact 4-D boolean mask from transformers' own `sdpa_mask`,
which flashtron adds as an additive bias inside the kernels.  Soft-capping (Gemma 2) and attention
sinks (`s_aux`, gpt-oss) map to flashtron's own arguments.  transformers is imported only inside
the functions, so this module loads without it.

    from flashtron.integrations.transformers import register
    register()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="ftron")

The name has no "flash" in it on purpose: transformers treats every such name as flash-attention and takes
that library's code paths, which some models remap or refuse (gpt-oss swaps in a hub kernel, Llama 4's
chunked attention raises, GPT-J, Falcon and GPT-Neo pick classes that call flash-attn's own helpers).
"""

import torch

from flashtron import bert_padding
from flashtron.interface import flash_attn_func, flash_attn_varlen_func

__all__ = ["register", "flashtron_attention_forward", "flashtron_mask"]

NAME = "ftron"  # see the module's docstring: a name containing "flash" takes transformers' flash-attention paths


def _transformers_masking():
    try:
        from transformers import masking_utils
    except ImportError as error:
        raise ImportError("flashtron.integrations.transformers needs Hugging Face Transformers: "
                          "pip install 'flashtron[transformers]'") from error
    return masking_utils


def register(name: str = NAME) -> None:
    """Register flashtron's attention and mask functions with transformers under `name`.

    Afterwards `from_pretrained(..., attn_implementation=name)`, `from_config(config,
    attn_implementation=name)` and `model.set_attn_implementation(name)` select flashtron.
    Registering again is harmless.  A name containing "flash" (such as "flashtron") works for models without
    flash-attention special cases (Llama, Mistral, Qwen2, Gemma): transformers then imports flash-attn's
    functions for it, which `register()` answers with flashtron's; the default name avoids those special cases.
    """
    masking_utils = _transformers_masking()
    from transformers import AttentionInterface
    AttentionInterface.register(name, flashtron_attention_forward)
    masking_utils.AttentionMaskInterface.register(name, flashtron_mask)
    if "flash" in name:
        _serve_the_flash_loader(name)


def _serve_the_flash_loader(name):
    """transformers counts every implementation whose name contains "flash" as flash-attention and, when a
    model selects it, imports flash_attn_func / flash_attn_varlen_func for it (from the flash-attn package,
    or else from a kernel hub, which fails for "flashtron").  Answer that import with flashtron's
    functions.  The attention itself still runs through `flashtron_attention_forward`."""
    from transformers import modeling_flash_attention_utils as flash_utils
    loader = getattr(flash_utils, "_lazy_imports", None)
    if loader is None:  # a transformers version without the loader has nothing to serve
        return
    served = getattr(loader, "flashtron_names", None)
    if served is None:
        served = set()

        def lazy_imports(implementation, attention_wrapper=None, allow_all_kernels=False):
            if implementation in served:
                import flashtron
                return (flash_attn_func, flash_attn_varlen_func, getattr(flashtron, "flash_attn_with_kvcache", None),
                        bert_padding.pad_input, bert_padding.unpad_input)
            return loader(implementation, attention_wrapper, allow_all_kernels=allow_all_kernels)

        lazy_imports.flashtron_names = served
        flash_utils._lazy_imports = lazy_imports
    served.add(name)


def flashtron_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                   attention_mask=None, **kwargs):
    """transformers' mask hook.  Returns None (no padding: causal or full attention as is), a bool
    (batch, kv_length) key padding mask (True: a real token) when the keys' padding is the only
    departure from plain causal or bidirectional attention, or else the exact 4-D bool mask
    (batch, 1, q_length, kv_length) built by transformers' sdpa_mask."""
    masking_utils = _transformers_masking()
    causal = mask_function is masking_utils.causal_mask_function
    bidirectional = mask_function is masking_utils.bidirectional_mask_function
    # A causal mask maps onto a bottom-right aligned flag only when the queries are the last keys.
    queries_last = int(q_offset) + q_length == int(kv_offset) + kv_length
    if (causal and queries_last) or bidirectional:
        if attention_mask is None:
            return None
        # The 2-D mask covers absolute positions [0, kv_offset + kv_length); shorter ones are padded.
        padding = masking_utils.prepare_padding_mask(attention_mask.to(torch.bool), kv_length, int(kv_offset))
        keys = padding[:, int(kv_offset):int(kv_offset) + kv_length]
        return None if bool(keys.all()) else keys
    kwargs.pop("allow_is_causal_skip", None)
    return masking_utils.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                                   kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask,
                                   allow_is_causal_skip=False, **kwargs)


def _additive(mask, dtype):
    """A bool mask (True: attend) or a float mask -> the additive bias flashtron takes."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.to(dtype)


def _attend_padded(q, k, v, key_mask, causal, settings):
    """q (B, Sq, H, D), k and v (B, Sk, Hk, D), key_mask (B, Sk) bool.  Causal: queries are the last
    Sq keys, so their mask is key_mask[:, -Sq:]; both sides are unpadded and, in each sequence,
    the valid queries are the last of its valid keys (bottom-right alignment is exact).
    Bidirectional: every query row is kept and attends to its sequence's valid keys."""
    batch, seqlen_q = q.shape[:2]
    k_packed, key_indices, cu_seqlens_k, max_seqlen_k, _ = bert_padding.unpad_input(k, key_mask)
    v_packed = bert_padding.index_first_axis(v.reshape(-1, *v.shape[2:]), key_indices)
    if causal:
        q_packed, query_indices, cu_seqlens_q, max_seqlen_q, _ = bert_padding.unpad_input(q, key_mask[:, -seqlen_q:])
    else:
        q_packed, max_seqlen_q = q.reshape(-1, *q.shape[2:]), seqlen_q
        cu_seqlens_q = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, dtype=torch.int32, device=q.device)
    out = flash_attn_varlen_func(q_packed, k_packed, v_packed, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                 max_seqlen_k, causal=causal, **settings)
    if causal:
        return bert_padding.pad_input(out, query_indices, batch, seqlen_q)
    return out.reshape(batch, seqlen_q, *out.shape[1:])


def flashtron_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                                sliding_window=None, softcap=None, is_causal=None, s_aux=None, **kwargs):
    """transformers' attention hook: query (B, H, Sq, D), key and value (B, Hk, Sk, D) -> (B, Sq, H, Dv).

    attention_mask is what `flashtron_mask` returned (None, 2-D key padding, or 4-D), or a 4-D
    mask the caller built itself (bool, or float additive).  Returns (output, None): attention
    weights are never materialised.
    """
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    # One head dim for q, k and v: zero-pad the smaller side (exact), slice the output.
    head_dim, value_dim = q.shape[-1], v.shape[-1]
    if value_dim < head_dim:
        v = torch.nn.functional.pad(v, (0, head_dim - value_dim))
    elif head_dim < value_dim:
        q = torch.nn.functional.pad(q, (0, value_dim - head_dim))
        k = torch.nn.functional.pad(k, (0, value_dim - head_dim))
    if scaling is None:
        scaling = head_dim ** -0.5
    settings = dict(dropout_p=dropout, softmax_scale=scaling, softcap=float(softcap or 0.0),
                    sinks=None if s_aux is None else s_aux.to(torch.float32))
    window = (-1, -1) if not sliding_window else (sliding_window - 1, sliding_window - 1)
    packed = kwargs.get("cu_seq_lens_q")
    if packed is not None and q.shape[0] == 1:
        # Sequences packed into one row (DataCollatorWithFlattening): their bounds are given.
        out = flash_attn_varlen_func(q[0], k[0], v[0], packed.to(torch.int32), kwargs["cu_seq_lens_k"].to(torch.int32),
                                     int(kwargs["max_length_q"]), int(kwargs["max_length_k"]), causal=is_causal,
                                     window_size=window, **settings)[None]
    elif attention_mask is None:
        out = flash_attn_func(q, k, v, causal=is_causal, window_size=window, **settings)
    elif attention_mask.dim() == 2:
        out = _attend_padded(q, k, v, attention_mask.to(torch.bool), is_causal, dict(window_size=window, **settings))
    else:
        # A full 4-D mask already holds causality and any window.
        out = flash_attn_func(q, k, v, attn_bias=_additive(attention_mask, q.dtype), **settings)
    return out[..., :value_dim].contiguous(), None
