"""The variable-length benchmark behind ``flashtron bench-varlen``.

One batch of sequences with lengths drawn uniformly from [min_len, max_len]
(seeded, so every run sees the same batch) is run three ways, forward and
forward+backward: flashtron's flash_attn_varlen_func on the packed tokens;
dense flashtron on a batch of the same size at the mean length (the
throughput varlen should keep); and each torch SDPA backend on the batch
padded to the longest sequence (what a user without varlen runs; with causal
masking and right padding the real rows see only real keys, so the padded call
computes the same attention).  FLOPs count only real tokens, so the padded
runs' TFLOP/s are useful work per second.  Timing and failure handling are
those of `flashtron.bench`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import warnings

import torch

from flashtron import bench

SDPA_IMPLS = ("sdpa-flash", "sdpa-cudnn", "sdpa-efficient")


@dataclasses.dataclass
class VarlenConfig:
    batch: int = 64
    min_len: int = 128
    max_len: int = 4096
    heads: int = 16
    headdim: int = 128
    causal: bool = True
    dtype: str = "bf16"
    seed: int = 0
    modes: tuple = bench.MODES
    out: str = "bench-out"
    warmup: float = 25.0
    rep: float = 100.0


def default_config(cuda: bool) -> VarlenConfig:
    if cuda:
        return VarlenConfig()
    return VarlenConfig(batch=4, min_len=16, max_len=96, heads=2, headdim=32, dtype="fp32", warmup=5.0, rep=20.0)


def _flops(lengths, config, mode) -> float:
    return sum(bench.attention_flops(1, n, config.heads, config.headdim, config.causal, mode) for n in lengths)


def _measure(name, attend, inputs, flops_by_mode, config, cuda, context=None) -> dict:
    """{mode: result or {"error": why}} for one way of running the batch."""
    shape = bench.Shape(config.headdim, 0, config.causal, 1, config.heads)
    results = {}
    for mode in config.modes:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                grad = torch.randn_like(inputs[0])
                result = bench._measure_mode(attend, context or contextlib.nullcontext, inputs, grad, mode,
                                             shape, config, cuda)
                result["flops"] = flops_by_mode[mode]
                result["tflops"] = flops_by_mode[mode] / result["ms"] / 1e9
                results[mode] = result
            except Exception as exc:
                results[mode] = {"error": bench._reason(exc, caught)}
        if cuda:
            torch.cuda.empty_cache()
        summary = _summary(results.get(mode, {}))
        print(f"    {name} {mode}: {summary}", file=sys.stderr, flush=True)
    return results


def _summary(result) -> str:
    if "ms" not in result:
        return result.get("error", "n/a")
    return f"{result['ms']:.3f} ms, {bench._num(result['tflops'])} TFLOP/s"


def run(config: VarlenConfig, command: str = "flashtron bench-varlen") -> dict:
    from flashtron import flash_attn_func, flash_attn_varlen_func

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = bench.DTYPES[config.dtype]
    env = bench.environment(cuda)
    bench.print_header(env, command, cuda)
    generator = torch.Generator().manual_seed(config.seed)
    lengths = torch.randint(config.min_len, config.max_len + 1, (config.batch,), generator=generator).tolist()
    total, longest = sum(lengths), max(lengths)
    mean = round(total / config.batch)
    print(f"batch {config.batch}, lengths in [{config.min_len}, {config.max_len}]: total {total}, mean {mean}, "
          f"longest {longest}; H={config.heads} D={config.headdim} {config.dtype} "
          f"{'causal' if config.causal else 'full'}\n", flush=True)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    make = lambda *shape: torch.randn(*shape, config.heads, config.headdim, device=device, dtype=dtype)

    rows = {}
    packed = [make(total).requires_grad_() for _ in range(3)]
    rows["flashtron-varlen"] = _measure(
        "flashtron-varlen",
        lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=config.causal),
        packed, {m: _flops(lengths, config, m) for m in config.modes}, config, cuda)
    del packed

    dense = [make(config.batch, mean).requires_grad_() for _ in range(3)]
    rows["flashtron-dense-at-mean"] = _measure(
        "flashtron-dense-at-mean", lambda q, k, v: flash_attn_func(q, k, v, causal=config.causal), dense,
        {m: _flops([mean] * config.batch, config, m) for m in config.modes}, config, cuda)
    del dense

    padded = [make(config.batch, longest).transpose(1, 2).contiguous().requires_grad_() for _ in range(3)]
    from torch.nn.attention import SDPBackend, sdpa_kernel
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for impl in SDPA_IMPLS:
        backend = getattr(SDPBackend, bench._SDPA_BACKENDS[impl])
        rows[impl + "-padded"] = _measure(
            impl + "-padded", lambda q, k, v: sdpa(q, k, v, is_causal=config.causal), padded,
            {m: _flops(lengths, config, m) for m in config.modes}, config, cuda,
            context=lambda backend=backend: sdpa_kernel(backend))
    del padded

    bars = _bars(rows, config.modes)
    print(bench._table(["impl"] + [f"{m} ms" for m in config.modes] + [f"{m} TFLOP/s" for m in config.modes],
                       [[name] + [f"{r[m]['ms']:.3f}" if "ms" in r.get(m, {}) else "n/a" for m in config.modes]
                        + [bench._num(r[m]["tflops"]) if "tflops" in r.get(m, {}) else "n/a"
                           for m in config.modes] for name, r in rows.items()]))
    print()
    print(bench._table(["mode", "varlen / dense-at-mean TFLOP/s", "varlen time / fastest padded SDPA",
                        "fastest SDPA"],
                       [[m, _fmt(b["throughput_ratio"]), _fmt(b["time_ratio"]), b["fastest_sdpa"] or "n/a"]
                        for m, b in bars.items()]))
    report = {**env, "command": command, "config": dataclasses.asdict(config), "lengths": lengths,
              "results": rows, "bars": bars}
    os.makedirs(config.out, exist_ok=True)
    path = os.path.join(config.out, "bench-varlen.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"\nwrote {path}")
    return report


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _bars(rows, modes) -> dict:
    """Per mode: varlen TFLOP/s over dense-at-mean, and varlen time over the fastest padded SDPA."""
    bars = {}
    for mode in modes:
        varlen = rows["flashtron-varlen"].get(mode, {})
        dense = rows["flashtron-dense-at-mean"].get(mode, {})
        sdpa = {name: r[mode]["ms"] for name, r in rows.items() if name.endswith("-padded") and "ms" in r.get(mode, {})}
        fastest = min(sdpa, key=sdpa.get) if sdpa else None
        bars[mode] = {
            "throughput_ratio": varlen["tflops"] / dense["tflops"] if "tflops" in varlen and "tflops" in dense
            else None,
            "time_ratio": varlen["ms"] / sdpa[fastest] if "ms" in varlen and fastest else None,
            "fastest_sdpa": fastest,
        }
    return bars
