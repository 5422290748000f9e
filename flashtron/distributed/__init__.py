"""Attention over a sequence split across processes (context parallelism), with ring-flash-attn's API.

    import torch.distributed as dist
    from flashtron.distributed import zigzag_ring_flash_attn_func, shard, gather
    rank, world = dist.get_rank(), dist.get_world_size()
    q, k, v = (shard(t, rank, world, layout="zigzag") for t in (q_all, k_all, v_all))
    out = zigzag_ring_flash_attn_func(q, k, v, causal=True)        # this rank's part of the output
    out_all = gather(out, layout="zigzag")                          # every rank's, reassembled

A packed variable-length batch is split sequence by sequence (each length a multiple of W):

    (q, cu_local), (k, _), (v, _) = (varlen_shard(t, cu_seqlens, rank, world) for t in (q_all, k_all, v_all))
    out = ring_flash_attn_varlen_func(q, k, v, cu_local, max_seqlen // world, causal=True)
    out_all = varlen_gather(out, cu_seqlens)

`ring`: the dense functions and their autograd; `ring_varlen`: the packed variable-length one;
`ring_pass`: the ring's forward and backward schedule, shared by both; `block_plan`: which
rectangles each ring step computes; `varlen_plan`: the same for a packed batch, as varlen kernel
calls; `merge`: combining partial outputs by log-sum-exp; `comm`: the ring's point-to-point
shifts and the check that ranks agree; `layout`: where each rank's part lies, shard / unshard /
gather and their varlen forms.
"""

from flashtron.distributed.layout import LAYOUTS, gather, shard, unshard, varlen_gather, varlen_shard, varlen_unshard
from flashtron.distributed.ring import (ring_flash_attn_func, ring_flash_attn_kvpacked_func,
                                        ring_flash_attn_qkvpacked_func, zigzag_ring_flash_attn_func,
                                        zigzag_ring_flash_attn_kvpacked_func, zigzag_ring_flash_attn_qkvpacked_func)
from flashtron.distributed.ring_varlen import (ring_flash_attn_varlen_func, ring_flash_attn_varlen_kvpacked_func,
                                               ring_flash_attn_varlen_qkvpacked_func)

__all__ = ["LAYOUTS", "gather", "ring_flash_attn_func", "ring_flash_attn_kvpacked_func",
           "ring_flash_attn_qkvpacked_func", "ring_flash_attn_varlen_func", "ring_flash_attn_varlen_kvpacked_func",
           "ring_flash_attn_varlen_qkvpacked_func", "shard", "unshard", "varlen_gather", "varlen_shard",
           "varlen_unshard", "zigzag_ring_flash_attn_func", "zigzag_ring_flash_attn_kvpacked_func",
           "zigzag_ring_flash_attn_qkvpacked_func"]
