"""Session 20: where the eager step's host time goes, at 1k causal (D 128: B16 H16; D 64: B16 H32).

Every layer of the call path is wrapped with enter/exit stamps (perf_counter_ns, any thread); the GPU is kept
busy by a sleep kernel so no call waits on the device.  Median over 80 steps of each stamp's offset from the
step's start and of each layer's inclusive time.  Then floors: an autograd.Function that launches nothing, with
3 and with 26 inputs; SDPA-cuDNN's step; and a CPU-side torch.profiler table of one step's aten ops."""
import functools, statistics, sys, time, threading
import torch
from torch.nn.attention import sdpa_kernel, SDPBackend
import flashtron
from flashtron import interface, ops, validation
from flashtron.kernels import launch, hopper_forward as hf, hopper_backward as hb
from flashtron.kernels import backward as pbwd
print(torch.cuda.get_device_name(), torch.__version__, flush=True)

STAMPS = []


def stamp(name):
    STAMPS.append((name, time.perf_counter_ns(), threading.get_ident()))


def wrap(owner, attr, name, static=False):
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def w(*a, **k):
        stamp(name + ">")
        try:
            return fn(*a, **k)
        finally:
            stamp(name + "<")
    setattr(owner, attr, staticmethod(w) if static else w)


def wrap_run(kernel, name):
    run = kernel.run

    def w(*a, **k):
        stamp(name + ">")
        try:
            return run(*a, **k)
        finally:
            stamp(name + "<")
    kernel.run = w


def instrument():
    wrap(interface, "_attention", "interface._attention")
    wrap(validation, "check_qkv", "validation.check_qkv")
    wrap(ops, "attention", "ops.attention")
    wrap(ops._Attention, "forward", "_Attention.forward", static=True)
    wrap(ops._Attention, "backward", "_Attention.backward", static=True)
    wrap(launch, "forward", "launch.forward")
    wrap(launch, "backward", "launch.backward")
    wrap(hf, "forward", "hopper_forward.forward")
    wrap(hf, "unsupported_reason", "hf.unsupported_reason")
    wrap(hb, "backward", "hopper_backward.backward")
    wrap(hb, "descriptor", "hb.descriptor")
    wrap(hf, "descriptor", "hf.descriptor")
    wrap(launch, "sink_gradient", "sink_gradient")
    wrap_run(hf.hopper_forward_kernel, "fwd kernel launch")
    wrap_run(hb.hopper_backward_kernel, "bwd kernel launch")
    wrap_run(pbwd.attention_backward_preprocess, "preprocess launch")
    wrap_run(pbwd.attention_backward_postprocess, "postprocess launch")


def busy():
    torch.cuda.synchronize()
    torch.cuda._sleep(80_000_000)


def host_us(fn, inputs, n=60):
    for _ in range(3):
        fn()
    ts = []
    for i in range(n):
        if i % 10 == 0:
            busy()
        for t in inputs:
            t.grad = None
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(ts)


class Floor3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q, k, v)
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, g):
        q, k, v = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class Floor26(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *inputs):
        q = inputs[0]
        ctx.save_for_backward(*inputs[:3], None, None, None, None, None, None, None, None, None, None)
        out = torch.empty_like(q)
        lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, g, _):
        q, k, v = ctx.saved_tensors[:3]
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)) + (None,) * 23


def main():
    instrument()
    for D, B, H in ((128, 16, 16), (64, 16, 32)):
        S = 1024
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn_like(q)
        ins = [q, k, v]

        def step():
            flashtron.flash_attn_func(q, k, v, causal=True).backward(g)
        for _ in range(3):
            for t in ins:
                t.grad = None
            step()
        torch.cuda.synchronize()
        offsets, spans, totals = {}, {}, []
        for i in range(80):
            if i % 10 == 0:
                busy()
            for t in ins:
                t.grad = None
            STAMPS.clear()
            stamp("step>")
            step()
            stamp("step<")
            t0 = STAMPS[0][1]
            main_tid = STAMPS[0][2]
            opened = {}
            for name, t, tid in STAMPS:
                key = name + ("" if tid == main_tid else " [other thread]")
                offsets.setdefault(key, []).append((t - t0) / 1e3)
                if name.endswith(">"):
                    opened[name[:-1]] = t
                elif name[:-1] in opened:
                    spans.setdefault(name[:-1], []).append((t - opened.pop(name[:-1])) / 1e3)
            totals.append((STAMPS[-1][1] - t0) / 1e3)
        torch.cuda.synchronize()
        print(f"\n=== D{D} B{B} H{H} S{S} causal: eager step, median of 80, GPU busy; step {statistics.median(totals):.0f} us")
        print("stamp offsets from the step's start (us):")
        for key, vals in sorted(offsets.items(), key=lambda kv: statistics.median(kv[1])):
            print(f"  {statistics.median(vals):8.1f}  {key}  (x{len(vals) / 80:.0f})")
        print("inclusive spans (us, median per occurrence):")
        for key, vals in spans.items():
            print(f"  {statistics.median(vals):8.1f}  {key}")

        # Floors and the reference, each measured the same way (no stamps inside them).
        f3 = lambda: Floor3.apply(q, k, v).backward(g)
        args26 = (q, k, v, D ** -0.5, -1, 0, 0.0, None, None, 0.0, None, False, None, None, None, None, -1, -1,
                  None, None, None, None, 1, False, None, False)
        f26 = lambda: Floor26.apply(*args26)[0].backward(g)
        qc, kc, vc = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in ins)
        gc = g.transpose(1, 2).contiguous()

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True).backward(gc)
        STAMPS.clear()
        for rnd in range(2):
            print(f"round {rnd}: floor Function(3 inputs) {host_us(f3, ins):.0f} us, floor Function(26 inputs) "
                  f"{host_us(f26, ins):.0f} us, cudnn step {host_us(cudnn, [qc, kc, vc]):.0f} us, "
                  f"flashtron step {host_us(step, ins):.0f} us (stamps on)", flush=True)
            STAMPS.clear()

        from torch.profiler import profile, ProfilerActivity
        for t in ins:
            t.grad = None
        busy()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                for t in ins:
                    t.grad = None
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))
        STAMPS.clear()


main()
