"""The CPU path: exact blockwise attention in PyTorch, beside the Triton launcher.

It takes the same normalised arguments as `flashtron.kernels.launch` and has
the same contract: forward returns (out, softmax_lse) with lse in natural log,
+inf for rows that see no key; backward recomputes the probabilities from that
lse.  Variants (window, softcap, ALiBi, sinks, dropout) follow the kernels'
definitions; dropout draws its own mask here.  Work is done in float32 over
blocks of query rows, each against the keys its rows can see, so memory is
O(rows_per_block * seqlen_k) per head, never O(seqlen_q * seqlen_k).
"""

import math

import torch

from flashtron.sinks import sink_gradient

# Scores held at once, across batch and heads: bounds the temporary memory.
_SCORE_ELEMENTS_PER_BLOCK = 1 << 22


def _rows_per_block(batch_heads: int, seqlen_k: int) -> int:
    return max(1, _SCORE_ELEMENTS_PER_BLOCK // max(1, batch_heads * seqlen_k))


def _key_range(row_start, row_end, seqlen_q, seqlen_k, window_left, window_right):
    """Keys [lo, hi) that rows [row_start, row_end) can see, bottom-right aligned."""
    diagonal = seqlen_k - seqlen_q
    lo = max(0, row_start + diagonal - window_left) if window_left >= 0 else 0
    hi = min(seqlen_k, row_end - 1 + diagonal + window_right + 1) if window_right >= 0 else seqlen_k
    return lo, max(lo, hi)


def _visible(row_start, row_end, key_lo, key_hi, seqlen_q, seqlen_k, window_left, window_right, device):
    rows = torch.arange(row_start, row_end, device=device)[:, None]
    keys = torch.arange(key_lo, key_hi, device=device)[None, :]
    distance = keys - rows - (seqlen_k - seqlen_q)
    keep = torch.ones(distance.shape, dtype=torch.bool, device=device)
    if window_left >= 0:
        keep &= distance >= -window_left
    if window_right >= 0:
        keep &= distance <= window_right
    return keep


def _grouped(t: torch.Tensor, num_heads_kv: int) -> torch.Tensor:
    """(B, S, H, D) -> (B, Hk, G, S, D) in float32, G query heads per kv head."""
    batch, seqlen, num_heads, head_dim = t.shape
    return t.float().reshape(batch, seqlen, num_heads_kv, num_heads // num_heads_kv, head_dim).permute(0, 2, 3, 1, 4)


def _ungrouped(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    batch, num_heads_kv, group, seqlen, head_dim = t.shape
    out = t.permute(0, 3, 1, 2, 4).reshape(batch, seqlen, num_heads_kv * group, head_dim).to(dtype)
    # The custom op's fake implementation promises a fresh contiguous tensor.
    return out.contiguous()


def _row_blocks(q_shape, seqlen_k, window_left, window_right):
    """(rows, keys) ranges of each block of query rows that sees at least one key."""
    batch, seqlen_q, num_heads, _ = q_shape
    step = _rows_per_block(batch * num_heads, seqlen_k)
    for row_start in range(0, seqlen_q, step):
        rows = (row_start, min(seqlen_q, row_start + step))
        keys = _key_range(*rows, seqlen_q, seqlen_k, window_left, window_right)
        if keys[0] < keys[1]:
            yield rows, keys


def _grouped_slopes(alibi_slopes, num_heads_kv):
    """ALiBi slopes (H,) or (B, H) -> broadcastable against (B, Hk, G, rows, keys)."""
    if alibi_slopes is None:
        return None
    slopes = alibi_slopes.float().reshape(-1, alibi_slopes.shape[-1])
    return slopes.reshape(slopes.shape[0], num_heads_kv, -1, 1, 1)


def _grouped_bias(attn_bias, seqlen_q, seqlen_k, num_heads_kv):
    """attn_bias (B|1, H|1, Sq|1, Sk|1) -> a view broadcastable against (B, Hk, G, Sq, Sk)."""
    if attn_bias is None:
        return None
    batch, num_heads = attn_bias.shape[:2]
    bias = attn_bias.expand(batch, num_heads, seqlen_q, seqlen_k)
    if num_heads == 1:
        return bias[:, :, None]
    return bias.reshape(batch, num_heads_kv, num_heads // num_heads_kv, seqlen_q, seqlen_k)


def _add_bias_gradient(dbias, ds, rows, keys):
    """Add ds (B, Hk, G, rows, keys), the gradient of a block of logits, into dbias (B|1, H|1, Sq|1, Sk|1),
    summed over the dims the bias broadcasts along."""
    grad = ds.reshape(ds.shape[0], -1, *ds.shape[3:])
    summed = [d for d in range(4) if dbias.shape[d] == 1 and grad.shape[d] != 1]
    if summed:
        grad = grad.sum(summed, keepdim=True)
    row_index = slice(None) if dbias.shape[2] == 1 else slice(*rows)
    key_index = slice(None) if dbias.shape[3] == 1 else slice(*keys)
    dbias[:, :, row_index, key_index] += grad


def _logits(q_rows, k, softmax_scale, softcap, slopes, rows, keys, seqlen_q, seqlen_k, window_left, window_right,
            bias=None):
    """Masked logits (B, Hk, G, rows, keys) in float32, and d(logit)/d(scaled score) under softcap."""
    scores = torch.matmul(q_rows, k[:, :, None, keys[0]:keys[1]].transpose(-1, -2)) * softmax_scale
    cap_slope = None
    if softcap > 0:
        capped = torch.tanh(scores / softcap)
        scores = softcap * capped
        cap_slope = 1.0 - capped * capped
    if slopes is not None:
        query_idx = torch.arange(rows[0], rows[1], device=scores.device)[:, None]
        key_idx = torch.arange(keys[0], keys[1], device=scores.device)[None, :]
        scores = scores - slopes * (query_idx + seqlen_k - seqlen_q - key_idx).abs()
    if bias is not None:
        scores = scores + bias[..., rows[0]:rows[1], keys[0]:keys[1]].float()
    keep = _visible(rows[0], rows[1], keys[0], keys[1], seqlen_q, seqlen_k, window_left, window_right, q_rows.device)
    return scores.masked_fill_(~keep, -math.inf), cap_slope


def _dropout_keep(dropout_seed, rows, shape, dropout_p):
    """This engine's own dropout RNG: one generator per block of rows, seeded from the call's seed
    and the block, so the backward (and dropout_keep_mask) regenerate the forward's mask."""
    seed = (int(dropout_seed.item()) + rows[0] * 0x9E3779B97F4A7C15) % 2**63
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) >= dropout_p


def _dense_forward(q, k, v, softmax_scale: float, window_left: int, window_right: int, softcap: float,
                   alibi_slopes, sinks, dropout_p: float, dropout_seed, attn_bias=None):
    batch, seqlen_q, num_heads, head_dim = q.shape
    seqlen_k, num_heads_kv = k.shape[1], k.shape[2]
    qg = _grouped(q, num_heads_kv)
    kg = _grouped(k, num_heads_kv)[:, :, 0]
    vg = _grouped(v, num_heads_kv)[:, :, 0]
    slopes = _grouped_slopes(alibi_slopes, num_heads_kv)
    sink_logits = None if sinks is None else sinks.float().reshape(1, num_heads_kv, -1, 1)
    bias = _grouped_bias(attn_bias, seqlen_q, seqlen_k, num_heads_kv)
    out = qg.new_zeros(qg.shape)
    lse = qg.new_full(qg.shape[:-1], math.inf)
    for rows, keys in _row_blocks(q.shape, seqlen_k, window_left, window_right):
        scores, _ = _logits(qg[..., rows[0]:rows[1], :], kg, softmax_scale, softcap, slopes, rows, keys,
                            seqlen_q, seqlen_k, window_left, window_right, bias)
        # As the kernels do: subtract the row max, normalise by the row sum at the end.
        # (exp(s - lse) would carry lse's rounding into every probability when |s| is large.)
        row_max = scores.amax(dim=-1)
        saw_nothing = row_max == -math.inf
        if sink_logits is not None:
            row_max = torch.maximum(row_max, sink_logits)
        row_max = row_max.masked_fill(saw_nothing, 0.0)
        p = torch.exp(scores - row_max[..., None])
        row_sum = p.sum(dim=-1)
        if sink_logits is not None:
            # The sink joins the denominator only; rows that see no key stay at out 0, lse +inf.
            row_sum = row_sum + torch.exp(sink_logits - row_max).masked_fill(saw_nothing, 0.0)
        if dropout_p > 0:
            # The denominator keeps every probability; only the weights applied to V are dropped.
            p = p * _dropout_keep(dropout_seed, rows, p.shape, dropout_p) / (1.0 - dropout_p)
        out[..., rows[0]:rows[1], :] = (torch.matmul(p, vg[:, :, None, keys[0]:keys[1]])
                                        / row_sum.masked_fill(saw_nothing, 1.0)[..., None])
        lse[..., rows[0]:rows[1]] = (row_max + torch.log(row_sum)).masked_fill(saw_nothing, math.inf)
    return _ungrouped(out, q.dtype), lse.reshape(batch, num_heads, seqlen_q)


def _dense_backward(dout, q, k, v, out, lse, softmax_scale: float, window_left: int, window_right: int,
                    softcap: float, alibi_slopes, sinks, dropout_p: float, dropout_seed, attn_bias=None,
                    bias_requires_grad: bool = False):
    batch, seqlen_q, num_heads, head_dim = q.shape
    seqlen_k, num_heads_kv = k.shape[1], k.shape[2]
    qg = _grouped(q, num_heads_kv)
    kg = _grouped(k, num_heads_kv)[:, :, 0]
    vg = _grouped(v, num_heads_kv)[:, :, 0]
    dog = _grouped(dout, num_heads_kv)
    slopes = _grouped_slopes(alibi_slopes, num_heads_kv)
    delta = (dog * _grouped(out, num_heads_kv)).sum(-1)
    lse_g = lse.reshape(qg.shape[:-1])
    dq = torch.zeros_like(qg)
    dk = torch.zeros_like(kg)
    dv = torch.zeros_like(vg)
    bias = _grouped_bias(attn_bias, seqlen_q, seqlen_k, num_heads_kv)
    dbias = (torch.zeros(attn_bias.shape, dtype=torch.float32) if bias_requires_grad
             else lse.new_empty(0))
    for rows, keys in _row_blocks(q.shape, seqlen_k, window_left, window_right):
        q_rows = qg[..., rows[0]:rows[1], :]
        do_rows = dog[..., rows[0]:rows[1], :]
        scores, cap_slope = _logits(q_rows, kg, softmax_scale, softcap, slopes, rows, keys,
                                    seqlen_q, seqlen_k, window_left, window_right, bias)
        # lse is +inf for rows that see nothing: their probabilities come out exactly 0.
        p = torch.exp(scores - lse_g[..., rows[0]:rows[1], None])
        dropped_p = p
        if dropout_p > 0:
            kept = _dropout_keep(dropout_seed, rows, p.shape, dropout_p) / (1.0 - dropout_p)
            dropped_p = p * kept
        dv[:, :, keys[0]:keys[1]] += torch.matmul(dropped_p.transpose(-1, -2), do_rows).sum(2)
        dp = torch.matmul(do_rows, vg[:, :, None, keys[0]:keys[1]].transpose(-1, -2))
        if dropout_p > 0:
            dp = dp * kept
        ds = p * (dp - delta[..., rows[0]:rows[1], None])
        if bias_requires_grad:
            _add_bias_gradient(dbias, ds, rows, keys)
        if cap_slope is not None:
            ds = ds * cap_slope
        dq[..., rows[0]:rows[1], :] = torch.matmul(ds, kg[:, :, None, keys[0]:keys[1]]) * softmax_scale
        dk[:, :, keys[0]:keys[1]] += torch.matmul(ds.transpose(-1, -2), q_rows).sum(2) * softmax_scale
    dk_out = dk.permute(0, 2, 1, 3).to(k.dtype)
    dv_out = dv.permute(0, 2, 1, 3).to(v.dtype)
    dsinks = sink_gradient(sinks, lse, delta.reshape(lse.shape))
    if bias_requires_grad:
        dbias = dbias.to(attn_bias.dtype)
    return _ungrouped(dq, q.dtype), dk_out.contiguous(), dv_out.contiguous(), dsinks, dbias


def sequences(q, k, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k):
    """(b, query rows, key rows) per sequence: index tuples into q and k that select sequence b's
    used rows as a batch of one (reads the lengths on the host: this engine is CPU-only)."""
    varlen = cu_seqlens_q is not None
    batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
    for b in range(batch):
        if varlen:
            q_start, q_end = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
            k_start, k_end = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        else:
            q_start, q_end, k_start, k_end = 0, q.shape[1], 0, k.shape[1]
        if seqused_q is not None:
            q_end = q_start + int(seqused_q[b])
        if seqused_k is not None:
            k_end = k_start + int(seqused_k[b])
        if varlen:
            yield b, (slice(q_start, q_end),), (slice(k_start, k_end),)
        else:
            yield b, (b, slice(q_start, q_end)), (b, slice(k_start, k_end))


def sequence_seed(dropout_seed, b: int):
    """Sequence b's dropout seed in this engine (sequences of one call must not share draws)."""
    return None if dropout_seed is None else dropout_seed + b * 0x61C88647


def sequence_slopes(alibi_slopes, b: int):
    """Sequence b's ALiBi slopes: its row of (B, H) slopes, or the shared (H,) ones."""
    if alibi_slopes is not None and alibi_slopes.dim() == 2:
        return alibi_slopes[b]
    return alibi_slopes


def _sequence_args(b, alibi_slopes, dropout_seed):
    """Sequence b's ALiBi slopes and dropout seed."""
    return sequence_slopes(alibi_slopes, b), sequence_seed(dropout_seed, b)


def forward(q, k, v, softmax_scale: float, window_left: int, window_right: int, softcap: float, alibi_slopes,
            sinks, dropout_p: float, dropout_seed, allow_tf32: bool, cu_seqlens_q=None, cu_seqlens_k=None,
            seqused_q=None, seqused_k=None, max_seqlen_q: int = -1, max_seqlen_k: int = -1, attn_bias=None,
            block_table=None, cache_batch_idx=None, cache_leftpad=None, num_splits: int = 1, pack_gqa: bool = False,
            descale=None):
    args = (softmax_scale, window_left, window_right, softcap)
    if descale is not None:
        # FP8: attention on the dequantised inputs in float32, output in bfloat16.
        q, k, v = (dequantize(t, scale, cu_seqlens_q if t is q else cu_seqlens_k)
                   for t, scale in zip((q, k, v), descale))
        out, lse = forward(q, k, v, *args, alibi_slopes, sinks, dropout_p, dropout_seed, allow_tf32, cu_seqlens_q,
                           cu_seqlens_k, seqused_q, seqused_k, max_seqlen_q, max_seqlen_k, attn_bias)
        return out.to(torch.bfloat16), lse
    if block_table is not None or cache_batch_idx is not None or cache_leftpad is not None:
        # num_splits and pack_gqa only change how the kernels divide the work.
        return _cache_forward(q, k, v, *args, alibi_slopes, cu_seqlens_q, cu_seqlens_k, seqused_k, block_table,
                              cache_batch_idx, cache_leftpad)
    if cu_seqlens_q is None and seqused_q is None and seqused_k is None:
        return _dense_forward(q, k, v, *args, alibi_slopes, sinks, dropout_p, dropout_seed, attn_bias)
    # One sequence at a time, each as a batch of one.  Unused rows: out 0, lse +inf.
    out = torch.zeros_like(q)
    varlen = cu_seqlens_q is not None
    lse = q.new_full((q.shape[-2], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1]), math.inf,
                     dtype=torch.float32)
    for b, q_rows, k_rows in sequences(q, k, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k):
        slopes, seed = _sequence_args(b, alibi_slopes, dropout_seed)
        out_b, lse_b = _dense_forward(q[q_rows][None], k[k_rows][None], v[k_rows][None], *args, slopes, sinks,
                                      dropout_p, seed)
        out[q_rows] = out_b[0]
        if varlen:
            lse[:, q_rows[0]] = lse_b[0]
        else:
            lse[b, :, q_rows[1]] = lse_b[0]
    return out, lse


def dequantize(t, scale, cu_seqlens=None):
    """FP8 t (B, S, heads, D), or packed (total, heads, D) with cu_seqlens, times its (B, Hk) descale
    factors (heads = Hk * G share their kv head's factor), in float32."""
    heads = t.shape[-2]
    per_head = scale.float().repeat_interleave(heads // scale.shape[1], dim=1)  # (B, heads)
    if cu_seqlens is None:
        return t.float() * per_head[:, None, :, None]
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return t.float() * per_head.repeat_interleave(lengths, dim=0)[:, :, None]


def _cache_keys(k, v, b, cu_seqlens_k, seqused_k, block_table, cache_batch_idx, cache_leftpad):
    """Sequence b's keys and values (Sk, Hk, D) in a KV cache: a batch row of a dense cache (possibly
    another row, cache_batch_idx), or pages through block_table; rows before cache_leftpad[b] are
    padding and rows from seqused_k[b] (or past cu_seqlens_k's length) are unused."""
    if cu_seqlens_k is not None:
        start, end = 0, int(cu_seqlens_k[b + 1]) - int(cu_seqlens_k[b])
    else:
        end = int(seqused_k[b]) if seqused_k is not None else (
            block_table.shape[1] * k.shape[1] if block_table is not None else k.shape[1])
        start = 0
    if cache_leftpad is not None:
        start = int(cache_leftpad[b])
    positions = torch.arange(start, end)
    if block_table is not None:
        pages = block_table[b].long()[positions // k.shape[1]]
        return k[pages, positions % k.shape[1]], v[pages, positions % k.shape[1]]
    if cu_seqlens_k is not None:
        return k[int(cu_seqlens_k[b]) + positions], v[int(cu_seqlens_k[b]) + positions]
    row = int(cache_batch_idx[b]) if cache_batch_idx is not None else b
    return k[row, start:end], v[row, start:end]


def _cache_forward(q, k, v, softmax_scale, window_left, window_right, softcap, alibi_slopes, cu_seqlens_q,
                   cu_seqlens_k, seqused_k, block_table, cache_batch_idx, cache_leftpad):
    """Forward over a KV cache, one sequence at a time (see _cache_keys)."""
    varlen = cu_seqlens_q is not None
    batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
    out = torch.zeros_like(q)
    lse = q.new_full((q.shape[-2], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1]), math.inf,
                     dtype=torch.float32)
    for b in range(batch):
        q_rows = (slice(int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])),) if varlen else (b,)
        k_b, v_b = _cache_keys(k, v, b, cu_seqlens_k, seqused_k, block_table, cache_batch_idx, cache_leftpad)
        out_b, lse_b = _dense_forward(q[q_rows][None], k_b[None], v_b[None], softmax_scale, window_left,
                                      window_right, softcap, sequence_slopes(alibi_slopes, b), None, 0.0, None)
        out[q_rows] = out_b[0]
        if varlen:
            lse[:, q_rows[0]] = lse_b[0]
        else:
            lse[b] = lse_b[0]
    return out, lse


def backward(dout, q, k, v, out, lse, softmax_scale: float, window_left: int, window_right: int,
             softcap: float, alibi_slopes, sinks, dropout_p: float, dropout_seed, allow_tf32: bool,
             cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
             max_seqlen_q: int = -1, max_seqlen_k: int = -1, attn_bias=None, bias_requires_grad: bool = False,
             deterministic: bool = False, grads=None):
    """deterministic: accepted for the common signature; this path is always deterministic.  grads: (dq, dk, dv)
    to copy the gradients into, as in the Triton launcher's backward."""
    results = _backward(dout, q, k, v, out, lse, softmax_scale, window_left, window_right, softcap, alibi_slopes,
                        sinks, dropout_p, dropout_seed, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k,
                        attn_bias, bias_requires_grad)
    if grads is None:
        return results
    for given, computed in zip(grads, results):
        given.copy_(computed)
    return (*grads, *results[3:])


def _backward(dout, q, k, v, out, lse, softmax_scale, window_left, window_right, softcap, alibi_slopes, sinks,
              dropout_p, dropout_seed, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k, attn_bias,
              bias_requires_grad):
    args = (softmax_scale, window_left, window_right, softcap)
    if cu_seqlens_q is None and seqused_q is None and seqused_k is None:
        return _dense_backward(dout, q, k, v, out, lse, *args, alibi_slopes, sinks, dropout_p, dropout_seed,
                               attn_bias, bias_requires_grad)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dsinks = lse.new_empty(0) if sinks is None else torch.zeros_like(sinks)
    varlen = cu_seqlens_q is not None
    for b, q_rows, k_rows in sequences(q, k, cu_seqlens_q, cu_seqlens_k, seqused_q, seqused_k):
        slopes, seed = _sequence_args(b, alibi_slopes, dropout_seed)
        lse_b = lse[:, q_rows[0]] if varlen else lse[b, :, q_rows[1]]
        dq_b, dk_b, dv_b, dsinks_b, _ = _dense_backward(
            dout[q_rows][None], q[q_rows][None], k[k_rows][None], v[k_rows][None], out[q_rows][None],
            lse_b[None], *args, slopes, sinks, dropout_p, seed)
        dq[q_rows] = dq_b[0]
        dk[k_rows] += dk_b[0]
        dv[k_rows] += dv_b[0]
        if sinks is not None:
            dsinks += dsinks_b
    return dq, dk, dv, dsinks, lse.new_empty(0)


def dropout_keep_mask(dropout_seed, q, seqlen_k, window_left, window_right, dropout_p):
    """This engine's keep mask as bool (B, H, Sq, Sk), for return_attn_probs; True where no key is seen."""
    batch, seqlen_q, num_heads, _ = q.shape
    keep = torch.ones((batch, num_heads, seqlen_q, seqlen_k), dtype=torch.bool)
    for rows, keys in _row_blocks(q.shape, seqlen_k, window_left, window_right):
        # (B, H, rows, keys) has the flat order of the engine's (B, Hk, G, rows, keys): same draws.
        block = _dropout_keep(dropout_seed, rows, (batch, num_heads, rows[1] - rows[0], keys[1] - keys[0]),
                              dropout_p)
        keep[:, :, rows[0]:rows[1], keys[0]:keys[1]] = block
    return keep


def attention_probabilities(q, k, softmax_scale, window_left, window_right, softcap, alibi_slopes, softmax_lse,
                            attn_bias=None):
    """P = exp(logits - lse) as float32 (B, H, Sq, Sk): materialised, for return_attn_probs only."""
    batch, seqlen_q, num_heads, _ = q.shape
    seqlen_k, num_heads_kv = k.shape[1], k.shape[2]
    qg, kg = _grouped(q, num_heads_kv), _grouped(k, num_heads_kv)[:, :, 0]
    logits, _ = _logits(qg, kg, softmax_scale, softcap, _grouped_slopes(alibi_slopes, num_heads_kv),
                        (0, seqlen_q), (0, seqlen_k), seqlen_q, seqlen_k, window_left, window_right,
                        _grouped_bias(attn_bias, seqlen_q, seqlen_k, num_heads_kv))
    probs = torch.exp(logits - softmax_lse.reshape(qg.shape[:-1])[..., None])
    return probs.reshape(batch, num_heads, seqlen_q, seqlen_k)
