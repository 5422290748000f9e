"""Kernel launches without the JIT's per-call work: the compiled kernel, kept per argument specialisation.

`kernel[grid](*args, **kwargs)` on a @triton.jit or @gluon.jit function binds every argument, derives its
specialisation, hashes that into the JIT's cache key, builds launch metadata and reads several knobs, on every
call.  On the H200 machines that took 60-115 µs of host time per launch (BENCHMARKS.md, session 20), and an eager
training step launches four.  `fast_launch` wraps a kernel so that the first call of each specialisation goes
through the JIT (which compiles, or finds the kernel in its caches, and launches) and later calls launch the
compiled kernel the JIT returned through its `run`, as torch.compile's Triton launcher does.

The specialisation key follows Triton's rules for the arguments flashtron passes: a tensor by dtype and 16-byte
alignment, an int by whether it is 1, divisible by 16 and fits 32 or 64 bits, a float not at all (fp32), a bool,
None or a constexpr by value, a tensor descriptor by dtype, block shape, layout and padding; keyword arguments
(constexprs and launch options) by value; and the current device.  A finer key than Triton's costs only an
extra trip through the JIT.  Launch hooks (Triton's profilers) and Triton's interpreter always take the JIT
path; FLASHTRON_FAST_LAUNCH=0 turns the fast path off.
"""

import os

import torch

try:
    from triton import knobs
except ImportError:  # pragma: no cover - Triton < 3.4
    knobs = None

_DISABLED = (os.environ.get("FLASHTRON_FAST_LAUNCH", "1") in ("", "0")
             or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or knobs is None)


def _tensor(t):
    return t.dtype, t.data_ptr() % 16 == 0


def _int(x):
    return x == 1, x % 16 == 0, -2**31 <= x < 2**31, -2**63 <= x < 2**63


def _descriptor(d):
    return type(d), d.base.dtype, tuple(d.block_shape), getattr(d, "layout", None), getattr(d, "padding", None)


def _value(x):
    return x


_SPECS = {torch.Tensor: _tensor, torch.nn.Parameter: _tensor, int: _int, bool: _value, float: lambda x: float,
          type(None): _value}


def spec(x):
    """What Triton specialises a kernel on for argument x (see the module's docstring)."""
    kind = _SPECS.get(type(x))
    if kind is not None:
        return kind(x)
    if isinstance(x, torch.Tensor):
        return _tensor(x)
    if hasattr(x, "block_shape") and hasattr(x, "base"):
        return _descriptor(x)
    return x


def _hooked() -> bool:
    hook = knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


def _device_and_stream() -> tuple:
    """The current CUDA device and its current stream's handle: where the JIT would launch."""
    device = torch.cuda.current_device()
    return device, torch._C._cuda_getCurrentRawStream(device)


class FastLaunch:
    """A kernel that launches as kernel[grid](*args, **kwargs), its compiled form reused per specialisation."""

    def __init__(self, kernel):
        self.kernel = kernel
        self._compiled = {}
        params = getattr(kernel, "params", [])
        self._names = [p.name for p in params]
        self._defaults = {p.name: p.default for p in params if p.has_default}

    def __getattr__(self, name):  # the wrapped kernel's attributes (fn, params, warmup, ...)
        if name == "kernel":
            raise AttributeError(name)
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        if _DISABLED or callable(grid):
            return self.kernel[grid]
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid: tuple, args: tuple, kwargs: dict) -> None:
        device, stream = _device_and_stream()
        key = (device, tuple(map(spec, args)), tuple(kwargs.items()))
        compiled = self._compiled.get(key)
        if compiled is None or _hooked():
            compiled = self.kernel[grid](*args, **kwargs)
            if hasattr(compiled, "packed_metadata") and hasattr(compiled, "function"):
                self._compiled[key] = compiled
            return
        # The launcher takes every parameter in order, constexprs included (it skips them).
        values = (*args, *(kwargs[n] if n in kwargs else self._defaults[n] for n in self._names[len(args):]))
        compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                     compiled.function, compiled.packed_metadata, None, None, None, *values)


def fast_launch(kernel) -> FastLaunch:
    """Wrap a top-level @triton.jit or @gluon.jit kernel (one no other kernel calls) in FastLaunch."""
    return FastLaunch(kernel)
