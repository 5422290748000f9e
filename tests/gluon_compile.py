"""Compiles the Hopper (Gluon) kernels for sm_90 through their host functions, on a machine without a GPU.

Run by test_gluon_compile.py as `python tests/gluon_compile.py FAMILY`, in a process of its own: it replaces
Triton's active driver with one that reports an sm_90 target, and every kernel launch in the Hopper modules
with a compile-only `warmup` (Triton's frontend, then ptxas, which ships with Triton).  The host functions
run on CPU tensors as they would on CUDA ones: their argument lists, descriptors and constexprs reach the
kernels, so a kernel that no longer compiles, or a host call that no longer matches its kernel, fails here.
Prints one line per case; exits non-zero on the first failure.
"""

import sys

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver


class _Sm90Driver:
    """The parts of Triton's CUDA driver that compiling (not launching) asks for, with an sm_90 target."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        return None

    def map_python_to_cpp_type(self, ty):
        from triton.backends.nvidia.driver import ty_to_cpp
        return ty_to_cpp(ty)


class _CompileOnly:
    """kernel[grid](*args, **kwargs) compiles the kernel for those arguments and launches nothing."""

    def __init__(self, kernel, compiled):
        self.kernel = getattr(kernel, "kernel", kernel)  # a FastLaunch wraps the JIT function
        self.compiled = compiled

    def __getitem__(self, grid):
        def compile_only(*args, **kwargs):
            self.compiled.append(self.kernel.warmup(*args, grid=grid, **kwargs))
        return compile_only

    def prepare(self, grid, args, kwargs, varying):
        """FastLaunch.prepare: compiles, and returns no prepared launch (none is made without a GPU)."""
        self[grid](*args, **kwargs)
        return None


def _install(module, names) -> list:
    """Compile-only launches of the kernels `names` that the host code in `module` launches."""
    driver.set_active(_Sm90Driver())
    from flashtron.kernels import hardware
    hardware.sm_count = lambda device: 132
    compiled = []
    for name in names:
        setattr(module, name, _CompileOnly(getattr(module, name), compiled))
    return compiled


def _tensors(shape, dtype=torch.bfloat16):
    return torch.randn(shape).to(dtype)


def _forward_cases():
    from flashtron.kernels import hopper_forward, transpose
    compiled = _install(hopper_forward, ["hopper_forward_kernel"])
    # FP8's keys-innermost copy of v (plain Triton) compiles for sm_90 too.
    transpose.keys_innermost_kernel = _CompileOnly(transpose.keys_innermost_kernel, compiled)
    # (batch, seqlen_q, seqlen_k, heads, kv heads, head dim, window, variable length, fp8): each loop of the
    # consumers (from the last block, without a masked softmax, three runs), two and three consumers, FP8.
    cases = [(2, 1000, 1100, 4, 2, 128, (-1, 0), False, False), (1, 4096, 4096, 2, 1, 128, (-1, -1), False, False),
             (1, 1536, 1536, 2, 2, 64, (-1, -1), False, False), (1, 8192, 8192, 1, 1, 64, (-1, 0), False, False),
             (2, 700, 700, 2, 2, 128, (1024, 0), False, False), (2, 500, 600, 2, 2, 256, (100, 50), False, False),
             (1, 900, 900, 4, 2, 128, (-1, 0), True, False), (2, 300, 400, 4, 2, 128, (-1, 0), False, True)]
    for batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, window, varlen, fp8 in cases:
        dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
        q = _tensors((batch, seqlen_q, heads, head_dim), dtype)
        k, v = (_tensors((batch, seqlen_k, heads_kv, head_dim), dtype) for _ in range(2))
        out = torch.empty(q.shape, dtype=torch.bfloat16)
        lse = torch.empty(batch, heads, seqlen_q)
        ragged, descale = None, None
        if varlen:  # the batch packed as one entry of `batch` sequences
            q, k, v, out = (t.reshape(1, -1, *t.shape[2:]) for t in (q, k, v, out))
            lse = torch.empty(heads, batch * seqlen_q)
            cu_q = torch.arange(0, batch + 1, dtype=torch.int32) * seqlen_q
            cu_k = torch.arange(0, batch + 1, dtype=torch.int32) * seqlen_k
            ragged = (cu_q, cu_k, seqlen_q, seqlen_k)
        if fp8:
            descale = torch.ones(3, batch, heads_kv)
        hopper_forward.forward(q, k, v, out, lse, head_dim ** -0.5, *window, ragged, descale)
        yield f"forward {batch}x{seqlen_q}x{seqlen_k}x{heads}x{heads_kv}x{head_dim} window {window}" \
              f"{' varlen' if varlen else ''}{' fp8' if fp8 else ''}", compiled


def _backward_cases():
    from flashtron.kernels import hopper_backward
    compiled = _install(hopper_backward, ["attention_backward_preprocess", "hopper_backward_kernel",
                                          "attention_backward_postprocess"])
    # Persistent (hopper_backward._persistent: short dense calls, windows) and one program per tile (longer ones,
    # D = 64 without a mask, variable-length batches without a left edge).
    cases = [(2, 1000, 1100, 4, 2, 128, (-1, 0), False), (1, 4096, 4096, 2, 2, 128, (-1, 0), False),
             (1, 2048, 2048, 2, 2, 64, (-1, -1), False), (2, 700, 700, 2, 2, 128, (1024, 0), False),
             (1, 900, 900, 4, 2, 64, (-1, 0), True)]
    for batch, seqlen_q, seqlen_k, heads, heads_kv, head_dim, window, varlen in cases:
        q, dout, out = (_tensors((batch, seqlen_q, heads, head_dim)) for _ in range(3))
        k, v = (_tensors((batch, seqlen_k, heads_kv, head_dim)) for _ in range(2))
        lse, ragged = torch.empty(batch, heads, seqlen_q), None
        if varlen:
            q, dout, out, k, v = (t.reshape(1, -1, *t.shape[2:]) for t in (q, dout, out, k, v))
            lse = torch.empty(heads, batch * seqlen_q)
            ragged = (torch.arange(0, batch + 1, dtype=torch.int32) * seqlen_q,
                      torch.arange(0, batch + 1, dtype=torch.int32) * seqlen_k, seqlen_q, seqlen_k)
        delta = torch.empty_like(lse)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        hopper_backward.backward(dout, q, k, v, out, lse, delta, dq, dk, dv, head_dim ** -0.5, *window, ragged)
        yield f"backward {batch}x{seqlen_q}x{seqlen_k}x{heads}x{heads_kv}x{head_dim} window {window}" \
              f"{' varlen' if varlen else ''}", compiled


def _decode_cases():
    from flashtron.kernels import hopper_decode
    compiled = _install(hopper_decode, ["hopper_decode_kernel"])
    # (batch, queries, heads, kv heads, head dim, page size, causal, splits)
    for batch, seqlen_q, heads, heads_kv, head_dim, page_size, causal, splits in [
            (3, 1, 32, 8, 128, 16, True, 1), (2, 2, 16, 2, 64, 64, False, 3), (2, 1, 8, 2, 256, 256, False, 1)]:
        q = _tensors((batch, seqlen_q, heads, head_dim))
        k, v = (_tensors((40, page_size, heads_kv, head_dim)) for _ in range(2))
        seqused_k = torch.full((batch, ), 100, dtype=torch.int32)
        block_table = torch.zeros(batch, 8, dtype=torch.int32)
        if splits > 1:
            out = torch.empty(splits, batch, seqlen_q, heads, head_dim)
            lse = torch.empty(splits, batch, heads, seqlen_q)
        else:
            out, lse = torch.empty_like(q), torch.empty(batch, heads, seqlen_q)
        hopper_decode.decode(q, k, v, out, lse, seqused_k, block_table, head_dim ** -0.5, causal, splits)
        yield f"decode {batch}x{seqlen_q}x{heads}x{heads_kv}x{head_dim} pages of {page_size} causal {causal}" \
              f" splits {splits}", compiled


FAMILIES = {"forward": _forward_cases, "backward": _backward_cases, "decode": _decode_cases}

if __name__ == "__main__":
    done = 0
    for label, compiled in FAMILIES[sys.argv[1]]():
        kernels = compiled[done:]
        assert any(c.name == f"hopper_{sys.argv[1]}_kernel" for c in kernels), f"{label}: its kernel did not compile"
        done = len(compiled)
        print(label, "->", ", ".join(f"{c.name} ({c.metadata.shared} B shared)" for c in kernels), flush=True)
