"""Ring attention benchmark: forward and forward+backward time on W GPUs, against one GPU.

    torchrun --nproc_per_node=2 benchmarks/ring.py                       # S = 128k, H = 16, D = 128
    torchrun --nproc_per_node=4 benchmarks/ring.py --seqlen 1048576 --heads 8 --output ring.jsonl

Each rank holds S / W tokens of a causal bf16 problem in the zigzag layout (options change
these) and runs flashtron.distributed's ring function; a step is timed with CUDA events over
--iters iterations after --warmup ones, between barriers, and the figure kept is the slowest
rank's (the step ends when every rank is done).  Then rank 0 alone times flash_attn_func on the
whole sequence (skipped by default past S = 256k, where one GPU's run takes long and the point is
the ring) and reports efficiency = T(1 GPU) / (W * T(W GPUs)): 1.0 is perfect scaling.
TFLOP/s count attention's matmuls as flashtron bench does (causal halves them; forward+backward
is 3.5x forward) and are per GPU.  Rank 0 prints a table and one JSON line, also appended to
--output.  Without a GPU it runs on gloo at a small default size: a functional check only.
"""

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

from flashtron import flash_attn_func
from flashtron.bench import attention_flops, environment
from flashtron.distributed import ring_flash_attn_func, zigzag_ring_flash_attn_func

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SINGLE_GPU_AUTO_LIMIT = 262144


def parse_args(on_gpu: bool):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqlen", type=int, default=131072 if on_gpu else 1024, help="global sequence length")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--heads-kv", type=int, default=None, help="key/value heads (default: --heads)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--layout", choices=("zigzag", "contiguous"), default="zigzag")
    parser.add_argument("--no-causal", dest="causal", action="store_false")
    parser.add_argument("--deterministic", action="store_true",
                        help="the ring's deterministic=True (atomic-free block backward; one GPU keeps the default)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--single", choices=("auto", "yes", "no"), default="auto",
                        help=f"time one GPU on the whole sequence (auto: when S <= {SINGLE_GPU_AUTO_LIMIT})")
    parser.add_argument("--output", default=None, help="append the JSON line to this file")
    return parser.parse_args()


class Timer:
    """Mean milliseconds of fn over iters runs after warmup runs: CUDA events on a GPU, else wall clock."""

    def __init__(self, on_gpu: bool):
        self.on_gpu = on_gpu

    def __call__(self, fn, warmup: int, iters: int, barrier=None) -> float:
        for _ in range(warmup):
            fn()
        self._synchronize()
        if barrier is not None:
            barrier()  # every rank starts the timed runs together
        if self.on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters
        began = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - began) * 1e3 / iters

    def _synchronize(self):
        if self.on_gpu:
            torch.cuda.synchronize()


def attention_steps(attend, q, k, v, dout):
    """(forward under no_grad, forward + backward): what is timed."""
    def forward():
        with torch.no_grad():
            attend(q, k, v)

    def forward_backward():
        q.grad = k.grad = v.grad = None
        attend(q, k, v).backward(dout)
    return forward, forward_backward


def slowest(ms: float, device) -> float:
    figure = torch.tensor([ms], dtype=torch.float64, device=device)
    dist.all_reduce(figure, op=dist.ReduceOp.MAX)
    return figure.item()


def main():
    on_gpu = torch.cuda.is_available()
    args = parse_args(on_gpu)
    if on_gpu:
        local_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(local_device)
        dist.init_process_group("nccl", device_id=local_device)
    else:
        dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda") if on_gpu else torch.device("cpu")
    collective_device = device if on_gpu else torch.device("cpu")
    dtype = DTYPES[args.dtype]
    heads_kv = args.heads_kv or args.heads
    parts = world_size * (2 if args.layout == "zigzag" else 1)
    if args.seqlen % parts:
        raise SystemExit(f"--seqlen {args.seqlen} must be a multiple of {parts} for the {args.layout} layout "
                         f"on {world_size} ranks")
    seqlen_local = args.seqlen // world_size
    ring = zigzag_ring_flash_attn_func if args.layout == "zigzag" else ring_flash_attn_func
    timer = Timer(on_gpu)

    # Random parts of a random problem: the ring's cost does not depend on the values.
    torch.manual_seed(rank)
    def local(heads, grad=True):
        t = torch.randn(args.batch, seqlen_local, heads, args.head_dim, device=device, dtype=dtype)
        return t.requires_grad_(grad)
    q, k, v, dout = local(args.heads), local(heads_kv), local(heads_kv), local(args.heads, grad=False)
    forward, forward_backward = attention_steps(
        lambda q, k, v: ring(q, k, v, causal=args.causal, deterministic=args.deterministic), q, k, v, dout)
    ring_ms = {}
    for mode, step in (("fwd", forward), ("fwd+bwd", forward_backward)):
        ring_ms[mode] = slowest(timer(step, args.warmup, args.iters, barrier=dist.barrier), collective_device)
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
    del q, k, v, dout

    run_single = args.single == "yes" or (args.single == "auto" and args.seqlen <= SINGLE_GPU_AUTO_LIMIT)
    single_ms = {}
    dist.barrier()
    if rank == 0 and run_single:
        if on_gpu:
            torch.cuda.empty_cache()
        whole = lambda heads, grad=True: torch.randn(args.batch, args.seqlen, heads, args.head_dim, device=device,
                                                     dtype=dtype).requires_grad_(grad)
        q, k, v, dout = whole(args.heads), whole(heads_kv), whole(heads_kv), whole(args.heads, grad=False)
        steps = attention_steps(lambda q, k, v: flash_attn_func(q, k, v, causal=args.causal), q, k, v, dout)
        for mode, step in zip(("fwd", "fwd+bwd"), steps):
            single_ms[mode] = timer(step, args.warmup, args.iters)
        del q, k, v, dout
    dist.barrier()

    if rank == 0:
        record = dict(environment(on_gpu), benchmark="ring", world_size=world_size,
                      backend=dist.get_backend(), layout=args.layout, causal=args.causal, dtype=args.dtype,
                      deterministic=args.deterministic,
                      batch=args.batch, seqlen=args.seqlen, seqlen_local=seqlen_local, heads=args.heads,
                      heads_kv=heads_kv, head_dim=args.head_dim, warmup=args.warmup, iters=args.iters,
                      peak_mib_rank0=peak_mib, results={})
        print(f"{args.layout} ring attention, {world_size} x {record['device']}: B={args.batch} S={args.seqlen} "
              f"H={args.heads} Hk={heads_kv} D={args.head_dim} {args.dtype} causal={args.causal}")
        print(f"{'mode':>8} {'W GPUs ms':>11} {'TFLOP/s/GPU':>12} {'1 GPU ms':>10} {'TFLOP/s':>8} {'efficiency':>10}")
        for mode in ("fwd", "fwd+bwd"):
            flops = attention_flops(args.batch, args.seqlen, args.heads, args.head_dim, args.causal, mode)
            entry = {"ring_ms": ring_ms[mode], "ring_tflops_per_gpu": flops / (world_size * ring_ms[mode] * 1e9),
                     "flops": flops}
            if mode in single_ms:
                entry.update(single_ms=single_ms[mode], single_tflops=flops / (single_ms[mode] * 1e9),
                             efficiency=single_ms[mode] / (world_size * ring_ms[mode]))
            record["results"][mode] = entry
            single = (f"{entry['single_ms']:>10.2f} {entry['single_tflops']:>8.1f} {entry['efficiency']:>10.3f}"
                      if mode in single_ms else f"{'-':>10} {'-':>8} {'-':>10}")
            print(f"{mode:>8} {entry['ring_ms']:>11.2f} {entry['ring_tflops_per_gpu']:>12.1f} {single}")
        line = json.dumps(record)
        print(line)
        if args.output:
            with open(args.output, "a") as handle:
                handle.write(line + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
