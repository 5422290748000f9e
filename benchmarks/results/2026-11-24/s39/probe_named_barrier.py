"""CPU compile probe (sm_90 stand-in driver): named-barrier arrive/sync as Gluon inline asm, and a one-warp worker
partition with its own register count.  Prints the PTX lines with setmaxnreg and bar.  Not run on a GPU."""
import sys, torch
sys.path.insert(0, "tests")
import gluon_compile as gc
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

@gluon.jit
def _main(x_ptr):
    gl.store(x_ptr + gl.arange(0, 128, layout=gl.BlockedLayout([1], [32], [4], [0])), 1.0)

@gluon.jit
def _one(x_ptr):
    offs = gl.arange(0, 32, layout=gl.BlockedLayout([1], [32], [1], [0]))
    v = gl.inline_asm_elementwise("bar.arrive 5, 160; mov.b32 $0, $1;", "=r,r", [offs], dtype=gl.int32, is_pure=False, pack=1)
    gl.store(x_ptr + 128 + v, 2.0)

@gluon.jit
def _four(x_ptr):
    offs = gl.arange(0, 128, layout=gl.BlockedLayout([1], [32], [4], [0]))
    v = gl.inline_asm_elementwise("bar.sync 5, 160; mov.b32 $0, $1;", "=r,r", [offs], dtype=gl.int32, is_pure=False, pack=1)
    gl.store(x_ptr + 256 + v, 3.0)

@gluon.jit
def k(x_ptr):
    gl.warp_specialize([(_main, (x_ptr,)), (_four, (x_ptr,)), (_one, (x_ptr,))], [4, 1], [240, 24])

from triton.runtime.driver import driver
driver.set_active(gc._Sm90Driver())
x = torch.empty(512)
c = k.warmup(x, grid=(1,), num_warps=4)
ptx = c.asm["ptx"]
print([l.strip() for l in ptx.splitlines() if "setmaxnreg" in l or "bar." in l][:12])
