"""Session 21 (e): the FP8 variable-length call that crashed, run directly on the Gluon forward (bypassing the
launcher's refusal), to be run under compute-sanitizer."""
import sys
import torch
from flashtron.kernels import hopper_forward as hf
sys.path.insert(0, "tests")
from test_fp8 import fp8_inputs

torch.manual_seed(0)
lengths = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "500,0,1023,17").split(",")]
q, k, v, descales = fp8_inputs(len(lengths), max(lengths), max(lengths), 4, 2, 128, device="cuda")
pack = lambda t: torch.cat([t[b, :n] for b, n in enumerate(lengths)])  # noqa: E731
qp, kp, vp = (pack(t)[None] for t in (q, k, v))
cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
out = torch.full(qp.shape, float("nan"), dtype=torch.bfloat16, device="cuda")
lse = torch.full((4, qp.shape[1]), float("nan"), device="cuda")
descale = torch.stack(descales).contiguous()
hf.forward(qp, kp, vp, out, lse, 128 ** -0.5, -1, 0, (cu, cu, max(lengths), max(lengths)), descale)
torch.cuda.synchronize()
print("lengths", lengths, "finite:", torch.isfinite(out).all().item(), flush=True)
