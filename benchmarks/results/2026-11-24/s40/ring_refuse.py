"""NCCL: a check refused on rank 1 only must raise on both ranks (no hang); then one valid call matches the
single-GPU result.  torchrun --nproc_per_node=2 experiments/s40/ring_refuse.py"""
import datetime, os
import torch, torch.distributed as dist
from flashtron import flash_attn_func
from flashtron.distributed import ring_flash_attn_func, shard
dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(rank)
q = torch.randn(1, 1024, 4, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 1024 if rank == 0 else 768, 4, 128, device="cuda", dtype=torch.bfloat16)
try:
    ring_flash_attn_func(q, k, k, causal=True)
    print(rank, "did not raise")
except ValueError as error:
    print(rank, "ValueError:", str(error)[:90])
torch.manual_seed(0)
full = [torch.randn(1, 4096, 4, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
parts = [shard(t, rank, world, "contiguous").contiguous() for t in full]
out = ring_flash_attn_func(*parts, causal=True)
ref = shard(flash_attn_func(*full, causal=True), rank, world, "contiguous")
print(rank, "max |ring - one GPU|", (out.float() - ref.float()).abs().max().item())
dist.destroy_process_group()
