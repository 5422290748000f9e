"""Attention over a sequence split across processes (context parallelism), with ring-flash-attn's API.

    import torch.distributed as dist
    from flashtron.distributed import zigzag_ring_flash_attn_func, shard, gather
    rank, world = dist.get_rank(), dist.get_world_size()
    q, k, v = (shard(t, rank, world, layout="zigzag") for t in (q_all, k_all, v_all))
    out = zigzag_ring_flash_attn_func(q, k, v, causal=True)        # this rank's part of the output
    out_all = gather(out, layout="zigzag")                          # every rank's, reassembled

`ring`: the functions and their autograd; `block_plan`: which rectangles each ring step computes;
`merge`: combining partial outputs by log-sum-exp; `comm`: the ring's point-to-point shifts;
`layout`: where each rank's part lies, shard / unshard / gather.
"""

from flashtron.distributed.layout import LAYOUTS, gather, shard, unshard
from flashtron.distributed.ring import (ring_flash_attn_func, ring_flash_attn_kvpacked_func,
                                        ring_flash_attn_qkvpacked_func, zigzag_ring_flash_attn_func,
                                        zigzag_ring_flash_attn_kvpacked_func, zigzag_ring_flash_attn_qkvpacked_func)

__all__ = ["LAYOUTS", "gather", "ring_flash_attn_func", "ring_flash_attn_kvpacked_func",
           "ring_flash_attn_qkvpacked_func", "shard", "unshard", "zigzag_ring_flash_attn_func",
           "zigzag_ring_flash_attn_kvpacked_func", "zigzag_ring_flash_attn_qkvpacked_func"]
