"""The decoding benchmark behind ``flashtron bench-decode``.

Decoding reads the whole KV cache for one new token: it is bound by memory
bandwidth, so the figure of merit is bytes of K and V read per second, set
against the device-to-device copy bandwidth measured in the same run (bytes
read + written per second of a large clone).  Each case (batch, cache length)
runs flashtron's flash_attn_with_kvcache on a contiguous cache and on a paged
one (page size 16; pages scattered at random, or in order with --page-order
sequential), and torch SDPA's flash and cuDNN backends on the contiguous cache
(enable_gqa).  Every call is captured
once in a CUDA graph of `calls` back-to-back calls and timed on replay, so
host overhead (argument checks, launches) is not counted for anyone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch

from flashtron import bench


@dataclasses.dataclass
class DecodeConfig:
    cases: tuple = ((1, 131072), (64, 4096), (1, 8192), (8, 32768))  # (batch, cache length)
    heads: int = 32
    heads_kv: int = 8
    headdim: int = 128
    page_size: int = 16
    page_order: str = "random"
    dtype: str = "bf16"
    calls: int = 20
    reps: int = 10
    out: str = "bench-out"


def default_config(cuda: bool) -> DecodeConfig:
    if cuda:
        return DecodeConfig()
    return DecodeConfig(cases=((2, 256),), heads=4, heads_kv=2, headdim=32, page_size=16, dtype="fp32", calls=2,
                        reps=2)


def _time_ms(fn, config: DecodeConfig, cuda: bool) -> float:
    """Milliseconds per call: median over reps of a CUDA graph of `calls` calls (CPU: wall time)."""
    import time
    fn()  # compile and warm up
    if not cuda:
        start = time.perf_counter()
        for _ in range(config.calls):
            fn()
        return (time.perf_counter() - start) * 1e3 / config.calls
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(config.calls):
            fn()
    times = []
    for _ in range(config.reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / config.calls)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(cuda: bool) -> float:
    """GB/s of a device-to-device copy of 1 GiB (bytes read + written)."""
    if not cuda:
        return float("nan")
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(50):  # bring the clocks up: a cold GPU reads ~30% low
        dst.copy_(src)
    ms = _time_ms(lambda: dst.copy_(src), DecodeConfig(calls=5, reps=10), True)
    return 2 * src.numel() * src.element_size() / ms / 1e6


def page_table(batch: int, seqlen: int, page_size: int, generator, device, order: str = "random"):
    """int32 (batch, pages per sequence): every page used once, in random order (a long-running
    server's fragmented pool) or in sequence (a fresh one)."""
    per_seq = -(-seqlen // page_size)
    pages = torch.randperm(batch * per_seq, generator=generator) if order == "random" else torch.arange(batch * per_seq)
    return pages.reshape(batch, per_seq).to(device, torch.int32)


def to_pages(cache, table, page_size: int):
    """cache (B, S, Hk, D) -> pages (num_pages, page_size, Hk, D) laid out by table."""
    batch, seqlen = cache.shape[:2]
    padded = torch.nn.functional.pad(cache, (0, 0, 0, 0, 0, table.shape[1] * page_size - seqlen))
    pages = torch.empty((table.numel(), page_size, *cache.shape[2:]), dtype=cache.dtype, device=cache.device)
    pages[table.flatten().long()] = padded.reshape(-1, page_size, *cache.shape[2:])
    return pages


def run(config: DecodeConfig, command: str = "flashtron bench-decode") -> dict:
    from flashtron import flash_attn_with_kvcache
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = bench.DTYPES[config.dtype]
    env = bench.environment(cuda)
    bench.print_header(env, command, cuda)
    copy_before = copy_bandwidth(cuda)
    print(f"H={config.heads} Hk={config.heads_kv} D={config.headdim} {config.dtype}, one query token\n", flush=True)
    generator = torch.Generator().manual_seed(0)
    rows, results = [], []
    for batch, seqlen in config.cases:
        q = torch.randn(batch, 1, config.heads, config.headdim, device=device, dtype=dtype)
        k = torch.randn(batch, seqlen, config.heads_kv, config.headdim, device=device, dtype=dtype)
        v = torch.randn_like(k)
        kv_bytes = 2 * k.numel() * k.element_size()
        seqlens = torch.full((batch,), seqlen, dtype=torch.int32, device=device)
        table = page_table(batch, seqlen, config.page_size, generator, device, config.page_order)
        k_pages, v_pages = to_pages(k, table, config.page_size), to_pages(v, table, config.page_size)
        q_sdpa, k_sdpa, v_sdpa = (t.transpose(1, 2) for t in (q, k, v))
        impls = {
            "flashtron": lambda: flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens),
            f"flashtron-paged{config.page_size}": lambda: flash_attn_with_kvcache(
                q, k_pages, v_pages, cache_seqlens=seqlens, block_table=table),
        }
        if cuda:
            for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                  ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                def call(backend=backend):
                    with sdpa_kernel(backend):
                        return torch.nn.functional.scaled_dot_product_attention(q_sdpa, k_sdpa, v_sdpa,
                                                                                enable_gqa=True)
                impls[name] = call
        expected = flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens).float()
        paged_out = impls[f"flashtron-paged{config.page_size}"]().float()
        agree = (paged_out - expected).abs().max().item()
        for name, fn in impls.items():
            try:
                ms = _time_ms(fn, config, cuda)
                gbps = kv_bytes / ms / 1e6
                result = {"ms": ms, "gbps": gbps}
            except Exception as exc:  # a baseline without a kernel for this case
                result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            results.append({"batch": batch, "seqlen": seqlen, "impl": name, **result})
            summary = (f"{result['ms'] * 1e3:.1f} us, {result['gbps']:.0f} GB/s" if "ms" in result
                       else result["error"])
            print(f"    B={batch} Sk={seqlen} {name}: {summary}", file=sys.stderr, flush=True)
        print(f"    B={batch} Sk={seqlen}: paged vs contiguous max |diff| {agree:.2e}", file=sys.stderr)
        impls = q = k = v = k_pages = v_pages = None  # free the caches before the next case
        if cuda:
            torch.cuda.empty_cache()
    # The copy is measured before and after the cases; the larger figure (a warm GPU) is the yardstick.
    copy = max(copy_before, copy_bandwidth(cuda)) if cuda else float("nan")
    print(f"\ncopy bandwidth: {copy:.0f} GB/s (bytes read + written; before the cases {copy_before:.0f})")
    for result in results:
        if "gbps" in result:
            result["over_copy"] = result["gbps"] / copy if cuda else None
        rows.append([str(result["batch"]), str(result["seqlen"]), result["impl"]]
                    + ([f"{result['ms'] * 1e3:.1f}", f"{result['gbps']:.0f}",
                        "n/a" if result["over_copy"] is None else f"{result['over_copy']:.3f}"]
                       if "ms" in result else ["n/a", "n/a", "n/a"]))
    print(bench._table(["B", "Sk", "impl", "us", "GB/s (K+V read)", "/ copy"], rows))
    report = {**env, "command": command, "config": dataclasses.asdict(config), "copy_gbps": copy,
              "results": results}
    os.makedirs(config.out, exist_ok=True)
    path = os.path.join(config.out, "bench-decode.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"\nwrote {path}")
    return report
