"""Session 34 (d): FP8's keys-innermost copy as a Triton kernel (transpose.keys_innermost) against torch's permuted
copy (the code before), same process.  The copy alone for three tile sizes, then the FP8 forward with each copy
(outputs compared bit for bit) and the bf16 forward; CUDA events, median of 40.  H 16, D 128, 16k tokens."""
import statistics
import torch
import flashtron
from flashtron.kernels import transpose

new_copy = transpose.keys_innermost


def old_copy(v, vt, target=None):  # the code before this session, for both of its cases
    batch, seqlen, heads, head_dim = v.shape
    if target is None:
        vt.view(batch, heads, head_dim, vt.shape[2])[..., :seqlen].copy_(v.permute(0, 2, 3, 1))
        vt[..., seqlen:].zero_()
    else:
        vt.view(torch.uint8)[0, :, target.long()] = v[0].reshape(seqlen, heads * head_dim).view(torch.uint8).t()
    return vt


def timeit(fn, n=40):
    for _ in range(3):
        fn()
    ev = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        ev.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3


print(torch.cuda.get_device_name())
rows = []
for B, S in ((16, 1024), (4, 4096), (1, 16384)):
    H, D = 16, 128
    q, k, v = (torch.randn(B, S, H, D, device="cuda").to(torch.float8_e4m3fn) for _ in range(3))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    vt = torch.empty(B, H * D, S, dtype=v.dtype, device="cuda")
    copies = [f"old {timeit(lambda: old_copy(v, vt)):.1f}"]
    for tile in (8192, 16384, 32768):
        transpose.TILE_BYTES = tile
        copies.append(f"tile {tile} {timeit(lambda: new_copy(v, vt)):.1f}")
    transpose.TILE_BYTES = 16384
    print(f"B{B} S{S} copy alone (us): " + ", ".join(copies), flush=True)
    for causal in (False, True):
        f = lambda: flashtron.flash_attn_func(q, k, v, causal=causal)
        out_new, t_new = f(), timeit(f)
        transpose.keys_innermost = old_copy
        out_old, t_old = f(), timeit(f)
        transpose.keys_innermost = new_copy
        t_bf16 = timeit(lambda: flashtron.flash_attn_func(qb, kb, vb, causal=causal))
        same = torch.equal(out_new, out_old)
        rows.append(f"| {S} | {'causal' if causal else 'none'} | {t_old:.0f} | {t_new:.0f} | {t_bf16:.0f} | "
                    f"{t_bf16 / t_old:.2f}x | {t_bf16 / t_new:.2f}x | {same} |")
print("| S | mask | FP8 fwd, torch copy (us) | FP8 fwd, kernel copy | bf16 fwd | FP8 speed-up before | after | same bits |")
print("\n".join(rows))
