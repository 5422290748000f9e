"""Launches of compiled kernels (kernels/compiled.py): the specialisation key, and when the JIT is still called.

The CPU tests drive FastLaunch with a stand-in for a JIT kernel and its compiled form; the GPU test launches a real
kernel through both paths, at two pointer alignments, and checks its output.
"""

import types

import pytest
import torch

from flashtron.kernels import compiled, hopper_backward, launch
from flashtron.kernels.backward import attention_backward_postprocess


def test_spec_tells_apart_what_triton_specialises_on():
    a = torch.empty(64, dtype=torch.bfloat16)
    spec = compiled.spec
    assert spec(a) == spec(torch.empty(8, dtype=torch.bfloat16))
    assert spec(a) != spec(a[1:])  # 2 bytes off 16-byte alignment
    assert spec(a) != spec(a.float())
    assert spec(torch.nn.Parameter(a)) == spec(a)
    assert len({spec(x) for x in (1, 2, 16, 2**31, 2**63)}) == 5  # one, not one, 16 | x, 64-bit, unsigned 64-bit
    assert spec(16) == spec(32) == spec(-16) and spec(2) == spec(3)
    assert spec(True) != spec(1) and spec(False) != spec(0)
    assert spec(0.5) == spec(3.0) and spec(0.5) != spec(0)
    assert spec(None) is None and spec("tf32") == "tf32"
    box = types.SimpleNamespace(base=a, block_shape=[1, 64, 128], layout="swizzle 128")
    assert spec(box) == spec(types.SimpleNamespace(base=a[8:], block_shape=[1, 64, 128], layout="swizzle 128"))
    assert spec(box) != spec(types.SimpleNamespace(base=a, block_shape=[1, 128, 128], layout="swizzle 128"))


class _Param:
    def __init__(self, name, default=None, has_default=False):
        self.name, self.default, self.has_default = name, default, has_default


class _StandIn:
    """A JIT kernel with parameters (X, n, BLOCK: constexpr, FLAG: constexpr = True): kernel[grid](...) records the
    call and returns a compiled kernel whose run records its launches."""

    def __init__(self):
        self.params = [_Param("X"), _Param("n"), _Param("BLOCK"), _Param("FLAG", True, True)]
        self.jit_calls, self.runs = [], []
        runs = self.runs
        self.compiled = types.SimpleNamespace(function="cu function", packed_metadata="metadata",
                                              run=lambda *launch_args: runs.append(launch_args))

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.jit_calls.append((grid, args, kwargs))
            return self.compiled
        return call


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(compiled, "_DISABLED", False)
    monkeypatch.setattr(compiled, "_device_and_stream", lambda: (0, 1234))
    monkeypatch.setattr(compiled, "_hooked", lambda: False)
    kernel = _StandIn()
    return kernel, compiled.FastLaunch(kernel)


def test_first_call_of_a_specialisation_goes_through_the_jit(stand_in):
    kernel, fast = stand_in
    x = torch.empty(32)
    fast[(5, )](x, 7, BLOCK=64)
    assert kernel.jit_calls == [((5, ), (x, 7), {"BLOCK": 64})] and kernel.runs == []
    fast[(6, 2)](torch.empty(48), 9, BLOCK=64)
    assert len(kernel.jit_calls) == 1
    # Grid padded to 3-D, the current stream, the compiled function and metadata, no hooks, then every parameter
    # in order: constexprs included, FLAG's default filled in.
    (launch_args, ) = kernel.runs
    assert launch_args[:9] == (6, 2, 1, 1234, "cu function", "metadata", None, None, None)
    assert launch_args[10:] == (9, 64, True)


@pytest.mark.parametrize("change", ["alignment", "dtype", "int one", "constexpr", "option"])
def test_a_new_specialisation_goes_through_the_jit_again(stand_in, change):
    kernel, fast = stand_in
    x = torch.empty(32)
    fast[(1, )](x, 7, BLOCK=64)
    other = {"alignment": ((x[1:], 7), {"BLOCK": 64}), "dtype": ((x.double(), 7), {"BLOCK": 64}),
             "int one": ((x, 1), {"BLOCK": 64}), "constexpr": ((x, 7), {"BLOCK": 128}),
             "option": ((x, 7), {"BLOCK": 64, "num_warps": 8})}[change]
    fast[(1, )](*other[0], **other[1])
    assert len(kernel.jit_calls) == 2 and kernel.runs == []
    fast[(1, )](*other[0], **other[1])
    assert len(kernel.jit_calls) == 2 and len(kernel.runs) == 1


def test_launch_hooks_and_callable_grids_keep_the_jit(stand_in, monkeypatch):
    kernel, fast = stand_in
    x = torch.empty(32)
    fast[(1, )](x, 7, BLOCK=64)
    monkeypatch.setattr(compiled, "_hooked", lambda: True)  # a profiler's launch hook sees every launch
    fast[(1, )](x, 7, BLOCK=64)
    monkeypatch.setattr(compiled, "_hooked", lambda: False)
    fast[lambda meta: (1, )](x, 7, BLOCK=64)
    assert len(kernel.jit_calls) == 3 and kernel.runs == []


def test_a_jit_result_without_a_compiled_kernel_is_not_kept(stand_in):
    kernel, fast = stand_in
    kernel.compiled = None  # e.g. the interpreter, or a compile still in flight
    x = torch.empty(32)
    fast[(1, )](x, 7, BLOCK=64)
    fast[(1, )](x, 7, BLOCK=64)
    assert len(kernel.jit_calls) == 2


class _Run:
    """A compiled kernel's launcher in Triton 3.6's form: no scratch memory, and for kernels with tensor descriptors
    a Python wrapper whose closure holds the C launcher and the descriptors' metadata."""
    global_scratch_size = profile_scratch_size = 0
    launch_cooperative_grid = launch_pdl = False

    def __init__(self, raw_launches):
        def launcher(*args):
            raw_launches.append(args)

        def inner(*args):  # never called here: Prepared reads its closure
            return launcher(*args), tensordesc_meta
        tensordesc_meta = [None]
        self.launch = inner

    def __call__(self, *args):  # FastLaunch's launch of its compiled kernel
        self.calls = getattr(self, "calls", 0) + 1


@pytest.fixture
def prepared_stand_in(stand_in):
    """The stand-in with a tensor descriptor first: (D, X, n, BLOCK: constexpr, FLAG: constexpr = True)."""
    kernel, _ = stand_in
    kernel.params.insert(0, _Param("D"))
    kernel.raw_launches = []
    kernel.compiled.run = _Run(kernel.raw_launches)
    return kernel, compiled.FastLaunch(kernel)


def _box(base):
    return types.SimpleNamespace(base=base, shape=[2, 16], strides=[16, 1], block_shape=[1, 16], layout="swizzle 32",
                                 padding="zero")


def test_a_prepared_launch_fills_in_only_what_varies(prepared_stand_in):
    """Prepared launches reach the C launcher with the first call's grid, metadata and fixed arguments, and each
    call's varying ones: a descriptor as its new base (here in Triton's form without a tensor map: base, shape,
    strides, padding, shape, strides)."""
    kernel, fast = prepared_stand_in
    first, second = torch.empty(32), torch.empty(32)
    prepared = fast.prepare((5, 2), (_box(first), first, 7), {"BLOCK": 64}, varying=(0, 1))
    assert isinstance(prepared, compiled.Prepared) and len(kernel.jit_calls) == 1 and kernel.raw_launches == []
    prepared(second, second)
    (launch_args, ) = kernel.raw_launches
    assert launch_args[:13] == (5, 2, 1, 1234, "cu function", False, False, None, None, "metadata", None, None, None)
    assert launch_args[13] is second and launch_args[14:19] == (2, 16, 16, 1, False)
    assert launch_args[23] is second and launch_args[24:] == (7, 64, True)


def test_a_prepared_launch_keeps_no_tensor_of_the_first_call(prepared_stand_in):
    import gc
    import weakref
    kernel, fast = prepared_stand_in
    first = torch.empty(32)
    alive = weakref.ref(first)
    prepared = fast.prepare((1, ), (_box(first), first, 7), {"BLOCK": 64}, varying=(0, 1))
    del first
    kernel.jit_calls.clear()  # the stand-in's own record of the call
    gc.collect()
    assert prepared is not None and alive() is None


def test_no_prepared_launch_with_a_fixed_tensor_or_scratch_memory(prepared_stand_in):
    kernel, fast = prepared_stand_in
    x = torch.empty(32)
    assert fast.prepare((1, ), (_box(x), x, 7), {"BLOCK": 64}, varying=(0, )) is None
    kernel.compiled.run.global_scratch_size = 256
    assert fast.prepare((1, ), (_box(x), x, 8), {"BLOCK": 64}, varying=(0, 1)) is None
    # Each launched once: the first through the JIT, the second through FastLaunch's compiled kernel (same key).
    assert len(kernel.jit_calls) == 1 and kernel.compiled.run.calls == 1 and kernel.raw_launches == []


def test_prepared_launches_under_a_hook_or_on_another_device_take_the_jit(prepared_stand_in, monkeypatch):
    kernel, fast = prepared_stand_in
    first, second = torch.empty(32), torch.empty(32)
    prepared = fast.prepare((3, ), (_box(first), first, 7), {"BLOCK": 64}, varying=(0, 1))
    monkeypatch.setattr(compiled, "_hooked", lambda: True)
    prepared(second, second)
    monkeypatch.setattr(compiled, "_hooked", lambda: False)
    monkeypatch.setattr(compiled, "_device_and_stream", lambda: (1, 99))
    prepared(second, second)
    assert kernel.raw_launches == [] and len(kernel.jit_calls) == 3
    for grid, (box, x, n), kwargs in kernel.jit_calls[1:]:
        assert grid == (3, ) and box.base is second and box.block_shape == [1, 16] and x is second and n == 7
        assert kwargs == {"BLOCK": 64}


def test_every_top_level_kernel_is_wrapped():
    assert isinstance(attention_backward_postprocess, compiled.FastLaunch)
    assert isinstance(launch.attention_forward_kernel, compiled.FastLaunch)


@pytest.mark.gpu
def test_compiled_launches_match_the_jit(monkeypatch):
    """The postprocess through the JIT, then twice through its compiled kernel, at an aligned pointer and then at
    one 4 bytes off (a specialisation of its own: the aligned build's vector loads would fault there)."""
    jit, jit_calls = attention_backward_postprocess.kernel, []

    class Counting:
        def __getitem__(self, grid):
            jit_calls.append(grid)
            return jit[grid]
    monkeypatch.setattr(attention_backward_postprocess, "kernel", Counting())
    monkeypatch.setattr(attention_backward_postprocess, "_compiled", {})
    block = hopper_backward.POSTPROCESS_BLOCK
    buffer = torch.randn(2 * block + 40, device="cuda")
    scale = 0.3 + torch.rand(()).item()
    for offset in (0, 1):
        accum = buffer[offset:]
        for _ in range(3):
            dq = torch.full(accum.shape, float("nan"), dtype=torch.bfloat16, device="cuda")
            attention_backward_postprocess[(3, )](accum, dq, accum.numel(), scale, 1, 1, 1, 1, BLOCK=block,
                                                  UPCAST=False, STRIDED=False)
            torch.cuda.synchronize()
            assert torch.equal(dq, (accum * scale).to(torch.bfloat16))
        assert len(jit_calls) == 1 + offset
    assert len(attention_backward_postprocess._compiled) == 2
