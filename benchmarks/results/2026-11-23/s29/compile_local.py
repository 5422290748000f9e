"""Compile the Gluon forward for sm_90 on a machine without a GPU (fake driver), and run ptxas -v on the PTX."""
import os, sys, subprocess, tempfile, types
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver as drv


class FakeDriver:
    def __init__(self):
        from triton.backends.nvidia.driver import CudaUtils  # noqa
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


def install():
    fake = FakeDriver()
    drv.set_active(fake)
    return fake


def ptxas_info(kernel):
    ptx = kernel.asm["ptx"]
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    r = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    return r.stderr
