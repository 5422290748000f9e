"""Session 31: where a forward tile's time goes.  flashtron_prof (experiments/prof31, make_fprof.py: the working
tree's package with %globaltimer stamps in hopper_forward) runs one forward per case; the stamps are summarised
per tile and consumer: Q's wait, the first block (S, then its softmax), the loop per block, the last P V, the
epilogue, the gap to the next tile, the programs' ends."""
import os, sys, numpy as np, torch
sys.path.insert(0, "experiments/prof31"); sys.path.insert(0, "benchmarks/results/2026-11-23/s30")
import flashtron_prof
from flashtron_prof.kernels import hopper_forward as hf
from abtool import kernel_time
OUT = os.environ.get("OUT", ".")
T, R, SL = 24, 3, 8
CASES = [(128, 16384, True, (1024, 0)), (128, 16384, True, (256, 0)), (128, 16384, True, (-1, -1))]


def analyse(buf, name):
    b = buf.reshape(-1, T, R, SL).astype(np.float64)
    t = b[:, :, :2, :]
    valid = t[..., 1] > 0
    nb = np.repeat(b[:, :, 2:3, 3], 2, axis=2)
    t0 = t[..., 1][valid].min()
    end = t[..., 7]
    span = end[valid].max() - t0
    pe = np.where(valid, end, 0).max(axis=(1, 2))
    used = pe > 0
    m = lambda x: x[valid].mean() / 1e3
    loop = t[..., 5] - t[..., 4]
    many = valid & (nb >= 3)
    per_block = (loop[many] / (nb[many] - 1)).mean() / 1e3
    gap = (t[:, 1:, :, 1] - t[:, :-1, :, 7])[valid[:, 1:] & valid[:, :-1]]
    tile = (end - t[..., 1])[valid]
    lines = [f"== {name}: programs {used.sum()}, tiles {valid[:, :, 0].sum()}, span {span / 1e3:.1f} us, "
             f"blocks per tile {nb[valid].mean():.2f}",
             f"tile {tile.mean() / 1e3:.2f} us: Q wait {m(t[..., 2] - t[..., 1]):.2f}, first S {m(t[..., 3] - t[..., 2]):.2f}, "
             f"first softmax {m(t[..., 4] - t[..., 3]):.2f}, loop {m(loop):.2f} ({per_block:.3f} per block), "
             f"last P V {m(t[..., 6] - t[..., 5]):.2f}, epilogue {m(t[..., 7] - t[..., 6]):.2f}; "
             f"end -> next tile {gap.mean() / 1e3 if gap.size else 0:.2f}",
             f"programs' ends before the last: mean {(pe[used].max() - pe[used]).mean() / 1e3:.2f} us, "
             f"max {(pe[used].max() - pe[used]).max() / 1e3:.2f}"]
    return "\n".join(lines)


def case(D, S, causal, window, reps=2):
    B, H = max(16384 // S, 1), 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    f = lambda: flashtron_prof.flash_attn_func(q, k, v, causal=causal, window_size=window)
    hf.PROF = None
    f(); torch.cuda.synchronize()
    t_off = kernel_time(f, name="hopper_forward_kernel")
    buf = torch.zeros(132 * T * R * SL, dtype=torch.int64, device="cuda")
    hf.PROF = buf
    f(); torch.cuda.synchronize()
    t_on = kernel_time(f, name="hopper_forward_kernel")
    name = f"D{D} S{S} causal={causal} window={window}"
    out = [f"{name}: forward kernel {t_off:.1f} us without stamps, {t_on:.1f} with"]
    for r in range(reps):
        buf.zero_(); torch.cuda.synchronize()
        f(); torch.cuda.synchronize()
        out.append(analyse(buf.cpu().numpy(), f"{name} rep {r}"))
    hf.PROF = None
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--warm":
        D, S, causal, window = CASES[int(sys.argv[2])]
        q, k, v = (torch.randn(1, 1024, 2048 // D, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for prof in (None, torch.zeros(132 * T * R * SL, dtype=torch.int64, device="cuda")):
            hf.PROF = prof
            flashtron_prof.flash_attn_func(q, k, v, causal=causal, window_size=window)
        torch.cuda.synchronize()
        sys.exit(0)
    print(torch.cuda.get_device_name(), flush=True)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(300):
        x @ x
    for c in CASES:
        print(case(*c), flush=True)
