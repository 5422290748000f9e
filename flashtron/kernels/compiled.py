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

import copy
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
    if _is_descriptor(x):
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

    def launch(self, grid: tuple, args: tuple, kwargs: dict):
        """kernel[grid](*args, **kwargs); returns the compiled kernel where one is kept, else None."""
        device, stream = _device_and_stream()
        key = (device, tuple(map(spec, args)), tuple(kwargs.items()))
        compiled = self._compiled.get(key)
        if compiled is None or _hooked():
            compiled = self.kernel[grid](*args, **kwargs)
            if hasattr(compiled, "packed_metadata") and hasattr(compiled, "function"):
                self._compiled[key] = compiled
                return compiled
            return None
        compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                     compiled.function, compiled.packed_metadata, None, None, None, *self._values(args, kwargs))
        return compiled

    def _values(self, args: tuple, kwargs: dict) -> tuple:
        """Every parameter in order, constexprs included (the launcher takes them and skips them)."""
        return (*args, *(kwargs[n] if n in kwargs else self._defaults[n] for n in self._names[len(args):]))

    def prepare(self, grid: tuple, args: tuple, kwargs: dict, varying: tuple):
        """Launch kernel[grid](*args, **kwargs), and return a `Prepared` launch of the same kernel, grid and arguments
        but for the positional arguments at the indices `varying`, which each call passes anew; None where the
        compiled kernel cannot be launched that way (see `Prepared.of`)."""
        if _DISABLED or _hooked():
            self.kernel[grid](*args, **kwargs)
            return None
        compiled = self.launch(grid, args, kwargs)
        return None if compiled is None else Prepared.of(self, compiled, grid, args, kwargs, varying)


def fast_launch(kernel) -> FastLaunch:
    """Wrap a top-level @triton.jit or @gluon.jit kernel (one no other kernel calls) in FastLaunch."""
    return FastLaunch(kernel)


class Prepared:
    """One launch of a compiled kernel kept with the argument list Triton's C launcher takes, so that a later call
    fills in only what changes: the positional arguments at `varying` (tensors, scalars, and tensor descriptors,
    which are passed as their new base tensor; each base must have the first descriptor's shape and strides).
    Nothing else of the first call is kept (no tensor), so a plan that holds it keeps no memory alive.

    Why: on an H100 host (BENCHMARKS.md, session 35) FastLaunch's launch of the Hopper forward took 49 µs: 19 for
    its key, 8 for Triton's per-argument Python, 9 for four tensor maps and 10 for the C launcher.  The Hopper
    host functions know their specialisation from their own plan's key (`launch_plans`), and a launch through
    this costs the tensor maps and the C launcher.  Under a launch hook (a profiler), or on another current
    device, a call goes through the JIT with its descriptors rebuilt."""

    def __init__(self, kernel, raw, template, slots, device, grid, args, kwargs, varying):
        self._kernel, self._raw, self._template = kernel, raw, template
        self._slots, self._device = slots, device
        self._grid, self._kwargs, self._varying = grid, kwargs, varying
        self._args = [None if i in varying else a for i, a in enumerate(args)]
        self._descriptors = {i: _rebased(args[i], None) for i in varying if _is_descriptor(args[i])}  # geometry only

    @classmethod
    def of(cls, kernel, compiled, grid, args, kwargs, varying):
        """A Prepared launch, or None: Triton's launcher not in the form this reads (other Triton versions), a
        kernel that needs per-launch scratch memory, or a tensor among the arguments that do not vary."""
        run = compiled.run
        if getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1):
            return None
        fixed = [a for i, a in enumerate(args) if i not in varying]
        if any(isinstance(a, torch.Tensor) or _is_descriptor(a) for a in fixed):
            return None
        launcher, metas = run.launch, None
        closure = getattr(launcher, "__closure__", None)
        if closure is not None:  # Triton's wrapper for tensor descriptors: the C launcher and the maps' metadata
            cells = dict(zip(launcher.__code__.co_freevars, (c.cell_contents for c in closure)))
            if "launcher" not in cells or "tensordesc_meta" not in cells:
                return None
            launcher, metas = cells["launcher"], list(cells["tensordesc_meta"])
        from triton.backends.nvidia import driver as nvidia
        device, stream = _device_and_stream()
        template = [grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                    compiled.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
                    compiled.packed_metadata, None, None, None]
        if len(template) != nvidia._BASE_ARGS_FORMAT_LEN:
            return None
        slots = {}  # positional index -> (its place in template, a tensor map's fill from a base pointer or None)
        for i, value in enumerate(kernel._values(args, kwargs)):
            if _is_descriptor(value):
                meta = metas.pop(0) if metas else None
                if meta is None:  # passed as base, shape and strides
                    slots[i] = (len(template), None)
                else:
                    slots[i] = (len(template), _map_fill(nvidia, value, meta))
                template.extend(nvidia.make_tensordesc_arg(value, meta))
            else:
                slots[i] = (len(template), None)
                template.append(value)
        for i in varying:
            template[slots[i][0]] = None
        return cls(kernel, launcher, template, [slots[i] for i in varying], device, grid, args, kwargs, varying)

    def __call__(self, *values) -> None:
        device, stream = _device_and_stream()
        if device != self._device or _hooked():
            args = list(self._args)
            for i, value in zip(self._varying, values):
                if i in self._descriptors:
                    value = _rebased(self._descriptors[i], value)
                args[i] = value
            self._kernel.kernel[self._grid](*args, **self._kwargs)
            return
        launch_args = self._template.copy()
        launch_args[3] = stream
        for (slot, fill), value in zip(self._slots, values):
            launch_args[slot] = value if fill is None else fill(value.data_ptr())
        self._raw(*launch_args)


def _is_descriptor(x) -> bool:
    return hasattr(x, "block_shape") and hasattr(x, "base")


def _rebased(descriptor, base):
    """The descriptor over `base` (same shape, strides, block and layout)."""
    rebased = copy.copy(descriptor)
    rebased.base = base
    return rebased


def _map_fill(nvidia, descriptor, meta):
    """base pointer -> the tensor map Triton's launcher would make for `descriptor` over that base (see
    triton.backends.nvidia.driver.make_tensordesc_arg, whose other arguments are fixed here)."""
    shape = list(descriptor.shape)
    if meta["fp4_padded"]:
        shape[-1] *= 2
    from triton.runtime.driver import driver
    fill = driver.active.utils.fill_tma_descriptor
    rest = (meta["swizzle"], meta["elem_size"], nvidia.TMA_DTYPE_DEVICE_TO_HOST[meta["elem_type"]], meta["block_size"],
            shape, list(descriptor.strides), 1 if descriptor.padding == "nan" else 0)
    return lambda pointer: fill(pointer, *rest)
