"""Launch configurations: tile sizes, warps and pipeline depth per kernel.

Chosen from a table keyed by what changes the best choice: the GPU
architecture, the padded head dim and the element size.  The table is shipped
with the package, so a new shape never waits for an autotuner.  Under Triton's
interpreter small tiles are used (with BLOCK_M != BLOCK_N so that the masked
and unmasked segments of every loop are exercised at small sequence lengths).

`override` lets the tuning script and tests try other configurations without
editing the table.
"""

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from flashtron.kernels import hardware


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool = False  # stream the loop's tiles through TMA descriptors where the layout allows (kernels/tma.py)


# TMA on under the interpreter too, so the CPU suite runs the descriptor path (fp32 and odd head
# dims still take pointer loads there).
_INTERPRETER = {
    "forward": KernelConfig(32, 16, 4, 1, tma=True),
    "dkdv": KernelConfig(16, 32, 4, 1, tma=True),
    "dq": KernelConfig(32, 16, 4, 1, tma=True),
}

# (kernel, padded head dim upper bound, element size) -> config, for Hopper (sm90).
# Winners of benchmarks/tune.py on an H200, 2026-11-21 (BENCHMARKS.md): D = 64 and 128 at
# S = 4k and 8k; D = 256 at S = 4k, where most larger tiles exceed shared memory.  TMA where an
# on/off comparison of device time measured it faster (H200, 2026-11-22, BENCHMARKS.md): the
# forward at D = 128 (+4% to +16%) and 256 (+28%), the backward at D = 128 (+0% to +5%) and 256
# (+1% to +12%); D = 64 measured slower with it.  The D = 256 backward tiles keep each thread's
# accumulators at 128 fp32 registers (the earlier ones held 256 and spilled): 2026-11-22 sweep,
# backward 78 -> ~250 TFLOP/s.
_HOPPER = {
    ("forward", 64, 2): KernelConfig(64, 64, 4, 3),
    ("forward", 128, 2): KernelConfig(128, 128, 8, 3, tma=True),
    ("forward", 256, 2): KernelConfig(64, 64, 4, 3, tma=True),
    ("dkdv", 64, 2): KernelConfig(64, 64, 4, 3),
    ("dkdv", 128, 2): KernelConfig(64, 128, 8, 3, tma=True),
    ("dkdv", 256, 2): KernelConfig(64, 64, 8, 2, tma=True),
    ("dq", 64, 2): KernelConfig(64, 64, 4, 3),
    ("dq", 128, 2): KernelConfig(128, 64, 8, 3, tma=True),
    ("dq", 256, 2): KernelConfig(64, 32, 4, 3, tma=True),
}

# FP8 forward (element size 1) on Hopper: winners of a sweep at S = 16k, H200, 2026-11-22
# (experiments in BENCHMARKS.md); D = 128 (64, 128, 4, 3) measured 718 / 673 TFLOP/s.
_HOPPER_FP8 = {
    ("forward", 64, 1): KernelConfig(64, 128, 4, 3),
    ("forward", 128, 1): KernelConfig(64, 128, 4, 3),
    ("forward", 256, 1): KernelConfig(128, 64, 8, 3),
}

# Any other GPU, and fp32 everywhere: smaller tiles that fit ~100 KB of shared memory.
_GENERIC = {
    ("forward", 64, 2): KernelConfig(128, 64, 4, 2),
    ("forward", 128, 2): KernelConfig(64, 64, 4, 2),
    ("forward", 256, 2): KernelConfig(64, 32, 4, 1),
    ("dkdv", 64, 2): KernelConfig(64, 64, 4, 2),
    ("dkdv", 128, 2): KernelConfig(32, 64, 4, 2),
    ("dkdv", 256, 2): KernelConfig(16, 32, 4, 1),
    ("dq", 64, 2): KernelConfig(64, 64, 4, 2),
    ("dq", 128, 2): KernelConfig(64, 32, 4, 2),
    ("dq", 256, 2): KernelConfig(32, 16, 4, 1),
    ("forward", 64, 4): KernelConfig(64, 32, 4, 2),
    ("forward", 128, 4): KernelConfig(32, 32, 4, 2),
    ("forward", 256, 4): KernelConfig(32, 16, 4, 1),
    ("dkdv", 64, 4): KernelConfig(32, 32, 4, 2),
    ("dkdv", 128, 4): KernelConfig(16, 32, 4, 1),
    ("dkdv", 256, 4): KernelConfig(16, 16, 4, 1),
    ("dq", 64, 4): KernelConfig(32, 32, 4, 2),
    ("dq", 128, 4): KernelConfig(32, 16, 4, 1),
    ("dq", 256, 4): KernelConfig(16, 16, 4, 1),
}

_overrides: dict = {}


def head_dim_bucket(block_d: int) -> int:
    return 64 if block_d <= 64 else 128 if block_d <= 128 else 256


def select(kernel: str, tensor: torch.Tensor, block_d: int, dropout: bool = False) -> KernelConfig:
    """dropout: the RNG's interleaving of Philox outputs needs shared memory of its own, so the
    pipeline is one stage shallower."""
    if kernel in _overrides:
        return _overrides[kernel]
    if tensor.device.type != "cuda":
        return _INTERPRETER[kernel]
    key = (kernel, head_dim_bucket(block_d), tensor.element_size())
    config = _GENERIC[key] if key in _GENERIC else _GENERIC[(kernel, key[1], 2)]
    if hardware.capability(tensor.device)[0] == 9:
        if key in _HOPPER:
            config = _HOPPER[key]
        elif key in _HOPPER_FP8:
            config = _HOPPER_FP8[key]
    if dropout:
        config = dataclasses.replace(config, num_stages=max(1, config.num_stages - 1))
    return config


def select_decode(tensor: torch.Tensor, block_d: int, rows: int, paged: bool = False) -> KernelConfig:
    """The forward's config for packed-GQA decoding: a query tile just large enough for the `rows`
    (query, head) pairs of one kv head (16 to 128), and key tiles sized for streaming the cache.
    Paged caches (D <= 128) take 64-key tiles four deep: the best of a sweep of tiles on an H200,
    2026-11-22, at every decode shape of BENCHMARKS.md (+3% to +8% over the contiguous cache's tile)."""
    if "decode" in _overrides:
        return _overrides["decode"]
    block_m = min(128, max(16, 1 << max(0, rows - 1).bit_length()))
    if tensor.device.type != "cuda":
        return KernelConfig(block_m, 16, 4, 1)
    if hardware.capability(tensor.device)[0] == 9 and tensor.element_size() == 2:
        if paged and block_d <= 128:
            return KernelConfig(block_m, 64, 4, 4)
        return KernelConfig(block_m, 128 if block_d <= 128 else 64, 4, 3)
    return KernelConfig(block_m, 64, 4, 2)


@contextlib.contextmanager
def override(**configs: KernelConfig):
    """Use the given configs (keys: forward, dkdv, dq, decode) inside the block."""
    saved = dict(_overrides)
    _overrides.update(configs)
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)
