"""Session 31: where a backward tile's time goes.  flashtron_prof (experiments/prof31: HEAD's package with
%globaltimer stamps at each tile's events, make_prof.py) runs one forward+backward per case; the stamps are saved
(npz) and summarised per tile: wait for K/V, each step, the epilogue, the hand-over, the producer's K/V issue, the
programs' ends."""
import os, sys, numpy as np, torch
sys.path.insert(0, "experiments/prof31"); sys.path.insert(0, "benchmarks/results/2026-11-23/s30")
import flashtron_prof
from flashtron_prof.kernels import hopper_backward as hb
from abtool import kernel_time
OUT = os.environ.get("OUT", ".")
T, R, SL = 40, 3, 24


def analyse(buf, name):
    b = buf.reshape(-1, T, R, SL).astype(np.float64)
    take = b[:, :, :2, 1]
    valid = take > 0
    t0 = take[valid].min()
    end = b[:, :, :2, 22]
    kv = b[:, :, :2, 2]
    steps = b[:, :, :2, 23]
    st = b[:, :, :2, 3:21]
    last = b[:, :, :2, 21]
    span = end[valid].max() - t0
    prog_end = np.where(valid, end, 0).max(axis=(1, 2))
    prog_start = np.where(valid, take, np.inf).min(axis=(1, 2))
    used = prog_end > 0
    lines = [f"== {name}: programs {used.sum()}, tiles {valid[:, :, 0].sum()}, span {span / 1e3:.1f} us, "
             f"mean steps {steps[valid].mean():.1f}"]
    lines.append(f"program start after t0: mean {(prog_start[used] - t0).mean() / 1e3:.2f} us, max "
                 f"{(prog_start[used] - t0).max() / 1e3:.2f}; end before the last: mean "
                 f"{(prog_end[used].max() - prog_end[used]).mean() / 1e3:.2f} us, max {(prog_end[used].max() - prog_end[used]).max() / 1e3:.2f}")
    tile_us = (end - take)[valid]
    lines.append(f"tile (take -> end): mean {tile_us.mean() / 1e3:.2f} us, median {np.median(tile_us) / 1e3:.2f}")
    w = (kv - take)[valid]
    lines.append(f"take -> K/V in: mean {w.mean() / 1e3:.3f} us, median {np.median(w) / 1e3:.3f}")
    n = int(np.median(steps[valid]))
    d = np.concatenate([(st[..., :1] - kv[..., None]), np.diff(st, axis=-1)], axis=-1)
    m = valid & (steps == n)
    per = [np.median(d[..., k][m]) / 1e3 for k in range(min(n, 18))]
    lines.append(f"steps (tiles of {n} steps: {m.sum()}): median us per step index: " + " ".join(f"{x:.2f}" for x in per))
    e = (end - last)[valid]
    lines.append(f"last step end -> epilogue done: mean {e.mean() / 1e3:.3f} us, median {np.median(e) / 1e3:.3f}")
    # hand-over: the next tile's take after this tile's end (same program, same consumer)
    gap = (take[:, 1:] - end[:, :-1])[valid[:, 1:] & valid[:, :-1]]
    if gap.size:
        lines.append(f"end -> next take: mean {gap.mean() / 1e3:.3f} us, median {np.median(gap) / 1e3:.3f}")
    # producer: its K/V issue (slot 2) against both consumers' previous end, and the consumers' K/V arrival
    pk = b[:, :, 2, 2]
    both_end = end[:, :-1].max(axis=-1)
    ok = valid[:, 1:, 0] & valid[:, :-1, 0] & (pk[:, 1:] > 0)
    if ok.any():
        lines.append(f"both ends -> producer issues K/V: mean {(pk[:, 1:] - both_end)[ok].mean() / 1e3:.3f} us; "
                     f"issue -> consumers see K/V: mean {(kv[:, 1:].min(axis=-1) - pk[:, 1:])[ok].mean() / 1e3:.3f} us")
    tot = valid.sum()
    lines.append("per tile and consumer, us: K/V wait %.2f, steps %.2f, epilogue %.2f, hand-over %.2f" % (
        w.sum() / tot / 1e3, (last - kv)[valid].sum() / tot / 1e3, e.sum() / tot / 1e3,
        (gap.sum() / tot / 1e3) if gap.size else 0))
    return "\n".join(lines)


def case(D, S, causal, window, reps=3):
    B, H = max(16384 // S, 1), 2048 // D
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    f = lambda: torch.autograd.grad(flashtron_prof.flash_attn_func(q, k, v, causal=causal, window_size=window),
                                    (q, k, v), dout)
    hb.PROF = None
    f(); torch.cuda.synchronize()
    t_off = kernel_time(f)
    tiles = -(-S // 128) * B * H
    buf = torch.zeros(max(tiles, 132) * T * R * SL, dtype=torch.int64, device="cuda")
    hb.PROF = buf
    f(); torch.cuda.synchronize()
    t_on = kernel_time(f)
    name = f"D{D} S{S} causal={causal} window={window}"
    out = [f"{name}: backward kernel {t_off:.1f} us without stamps, {t_on:.1f} with"]
    saved = {}
    for r in range(reps):
        buf.zero_(); torch.cuda.synchronize()
        f(); torch.cuda.synchronize()
        saved[f"r{r}"] = buf.cpu().numpy()
        out.append(analyse(saved[f"r{r}"], f"{name} rep {r}"))
    hb.PROF = None
    np.savez_compressed(os.path.join(OUT, f"prof-D{D}-S{S}-{'c' if causal else 'n'}-{window[0]}-{window[1]}.npz"), **saved)
    return "\n".join(out)


CASES = [(128, 16384, True, (1024, 0)), (128, 16384, True, (256, 0)), (128, 16384, True, (-1, -1)),
         (64, 16384, True, (1024, 0))]

if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--warm":  # compile case I's kernels, stamps off and on
        D, S, causal, window = CASES[int(sys.argv[2])]
        q, k, v = (torch.randn(1, 1024, 2048 // D, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        for prof in (None, torch.zeros(132 * T * R * SL, dtype=torch.int64, device="cuda")):
            hb.PROF = prof
            torch.autograd.grad(flashtron_prof.flash_attn_func(q, k, v, causal=causal, window_size=window),
                                (q, k, v), torch.randn_like(q))
        torch.cuda.synchronize()
        sys.exit(0)
    print(torch.cuda.get_device_name(), flush=True)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(300):
        x @ x
    for i in map(int, os.environ.get("PROF_CASES", "0,1,2,3").split(",")):
        print(case(*CASES[i]), flush=True)
