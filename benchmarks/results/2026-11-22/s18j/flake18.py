"""Session 18: how often test_gpu.py::test_kvcache_sanitizer_cases's bias check fails, and by how much: its dbias
(fp16, (2, 1, 300, 1), causal) error over the 3x rule's bar on fresh inputs, 300 draws."""
import os, sys
import torch
sys.path.insert(0, "tests")
import reference
from test_attn_bias import check_with_bias, inputs as bias_inputs, random_bias
ratios = {}
orig = reference.assert_within_rule
def recording(name, ours, truth, plain, factor, slack=1e-5):
    largest = truth.abs().max().item() if truth.numel() else 0.0
    rounding = 2 * torch.finfo(ours.dtype).eps * largest
    err = reference.max_error(ours, truth)
    bar = max(factor * reference.max_error(plain, truth) + slack * max(1.0, largest), rounding)
    ratios.setdefault(name, []).append(err / bar)
import test_attn_bias
test_attn_bias.assert_within_rule = recording
for i in range(300):
    q, k, v = bias_inputs(torch.float16, 300, 200, device="cuda")
    check_with_bias(q, k, v, random_bias((2, 1, 300, 1), torch.float16, device="cuda"), causal=True)
for name, r in ratios.items():
    r = torch.tensor(r)
    print(f"{name}: err/bar max {r.max():.3f}, p99 {r.quantile(0.99):.3f}, median {r.median():.3f}, over 1: {(r > 1).sum().item()} of {len(r)}")
