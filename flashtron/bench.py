"""Attention benchmark behind ``flashtron bench``: forward and forward+backward
throughput (TFLOP/s) and peak memory of flashtron's ``flash_attn_func`` against
PyTorch's scaled_dot_product_attention backends (flash, cuDNN, memory-efficient,
math) and torch.compile'd FlexAttention, over the shapes of flash-attn's own
benchmark (B*S tokens and H*D hidden held fixed while S and D vary, causal and
not). On a GPU every implementation is timed with ``triton.testing.do_bench``
(median); the forward is timed under ``torch.no_grad`` as at inference, the
forward+backward as one step of training. Each implementation gets its own copy
of the same random inputs in the layout it wants, built outside the timed region.
A backend that is missing or fails for a shape is recorded with its reason and
the run goes on. Without a GPU a small CPU run exercises the same code paths but
says nothing about GPU speed. Results go to stdout as tables, to bench.json and
to bench.png (matplotlib when present, else a small built-in PNG writer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import struct
import sys
import time
import warnings
import zlib

import torch

IMPLS = ("flashtron", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "flex")
# Opt-in rows (--impls): flashtron on the same shape with one variant switched on.  FLOPs are
# counted for the plain shape, so a row's TFLOP/s over flashtron's is its speed-up.
VARIANTS = {
    "flashtron-window": {"window_size": (1024, 0)},
    "flashtron-softcap": {"softcap": 30.0},
    "flashtron-alibi": {"alibi_slopes": "geometric"},
    "flashtron-sinks": {"sinks": "random"},
    "flashtron-dropout": {"dropout_p": 0.1},
    # float8_e4m3fn q, k, v (cast once, outside the timing), descales 1, bf16 out; forward only.
    "flashtron-fp8": {"fp8": True},
}
MODES = ("fwd", "fwd+bwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
                  "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-math": "MATH"}
# The math backend materialises the fp32 score matrix (and more for backward);
# past this it would only measure how the allocator copes.
MATH_SCORE_LIMIT_BYTES = 4 * 2**30
CPU_NOTE = "CPU run: a functional check only; these numbers say nothing about GPU speed."


@dataclasses.dataclass
class BenchConfig:
    headdims: tuple = (64, 128)
    seqlens: tuple = (512, 1024, 2048, 4096, 8192, 16384)
    causal: tuple = (False, True)
    impls: tuple = IMPLS
    modes: tuple = MODES
    dtype: str = "bf16"
    tokens: int = 16384
    hidden: int = 2048
    out: str = "bench-out"
    warmup: float = 25.0
    rep: float = 100.0


def default_config(cuda: bool) -> BenchConfig:
    if cuda:
        return BenchConfig()
    return BenchConfig(headdims=(64,), seqlens=(128, 256), impls=("flashtron", "sdpa-math"),
                       dtype="fp32", tokens=512, hidden=256, warmup=5.0, rep=20.0)


@dataclasses.dataclass(frozen=True)
class Shape:
    headdim: int
    seqlen: int
    causal: bool
    batch: int
    heads: int

    def label(self) -> str:
        return f"D={self.headdim} S={self.seqlen} {'causal' if self.causal else 'full'}"


def attention_flops(batch, seqlen, heads, headdim, causal, mode="fwd") -> float:
    """Matmul FLOPs of attention: QK^T and PV are 2*S*S*D each per head; causal
    does half the work; backward does 2.5x the forward (five matmuls, not two)."""
    flops = 4.0 * batch * seqlen * seqlen * heads * headdim
    if causal:
        flops /= 2
    return flops * 3.5 if mode == "fwd+bwd" else flops


def shapes(config: BenchConfig) -> list:
    found = []
    for d in config.headdims:
        for s in config.seqlens:
            for c in config.causal:
                batch, heads = config.tokens // s, config.hidden // d
                if batch < 1 or heads < 1:
                    print(f"skipping D={d} S={s}: tokens={config.tokens} / hidden={config.hidden} "
                          "give an empty batch or no heads", file=sys.stderr)
                    continue
                found.append(Shape(d, s, c, batch, heads))
    return found


def print_header(env: dict, command: str, cuda: bool) -> None:
    """The lines every benchmark starts with: where, with what, when, how run; a CPU run says it is
    a functional check only."""
    print(f"device: {env['device']}\ntorch {env['torch']}, triton {env['triton']}, "
          f"python {env['python']}\ndate: {env['date']}\ncommand: {command}")
    if not cuda:
        print(f"*** {CPU_NOTE} ***")


def environment(cuda: bool) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # triton is optional for the CPU path
        triton_version = None
    env = {"device": torch.cuda.get_device_name() if cuda
           else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
           "cuda": cuda, "torch": torch.__version__, "triton": triton_version,
           "python": platform.python_version(),
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if cuda:
        env["cuda_version"] = torch.version.cuda
        env["cudnn_version"] = torch.backends.cudnn.version()
    return env


# --------------------------------------------------------------- implementations

def _attention(impl: str, shape: Shape, device: torch.device):
    """Return (attend, wants_bhsd, context): attend(q, k, v) -> out in that layout,
    context() a context manager that must be active while attend runs."""
    causal = shape.causal
    if impl == "flashtron" or impl in VARIANTS:
        from flashtron import flash_attn_func  # lazy: kernels may be absent at import
        variant = dict(VARIANTS.get(impl, {}))
        if variant.get("alibi_slopes") == "geometric":  # the ALiBi paper's slopes 2^(-8h/H)
            heads = torch.arange(1, shape.heads + 1, device=device, dtype=torch.float32)
            variant["alibi_slopes"] = torch.exp2(-8.0 * heads / shape.heads)
        if variant.get("sinks") == "random":
            variant["sinks"] = torch.randn(shape.heads, device=device, requires_grad=True)
        if variant.pop("fp8", False):
            return _fp8_attend(flash_attn_func, causal), False, contextlib.nullcontext
        return (lambda q, k, v: flash_attn_func(q, k, v, causal=causal, **variant)), False, contextlib.nullcontext
    if impl == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        mask = None
        if causal:
            mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None,
                                     shape.seqlen, shape.seqlen, device=str(device))
        # dynamic=False: a dynamic-shape graph would not be the kernel Flex users get.
        compiled = torch.compile(flex_attention, dynamic=False)
        return (lambda q, k, v: compiled(q, k, v, block_mask=mask)), True, contextlib.nullcontext
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = getattr(SDPBackend, _SDPA_BACKENDS[impl], None)
    if backend is None:
        raise RuntimeError(f"SDPBackend.{_SDPA_BACKENDS[impl]} missing in torch {torch.__version__}")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return (lambda q, k, v: sdpa(q, k, v, is_causal=causal)), True, lambda: sdpa_kernel(backend)


def _fp8_attend(flash_attn_func, causal):
    """attend(q, k, v) on float8_e4m3fn copies of the inputs, made once per input set (the cast is not
    part of what is timed)."""
    copies = {}

    def attend(q, k, v):
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr())
        if key not in copies:
            copies.clear()
            copies[key] = tuple(t.detach().to(torch.float8_e4m3fn) for t in (q, k, v))
        return flash_attn_func(*copies[key], causal=causal)
    return attend


def _time_cpu(step, inputs, warmup_ms, rep_ms) -> float:
    def once():
        for t in inputs:
            t.grad = None
        start = time.perf_counter()
        step()
        return (time.perf_counter() - start) * 1e3
    end = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < end:
        once()
    times, end = [], time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < end:
        times.append(once())
    return statistics.median(times)


def _peak_mib(step, inputs) -> float:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    for t in inputs:
        t.grad = None
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _measure_mode(attend, context, inputs, grad, mode, shape, config, cuda) -> dict:
    q, k, v = inputs
    if mode == "fwd":
        # Detached too, since Flex refuses inputs that require grad on some devices.
        q, k, v = (t.detach() for t in inputs)

        def step():
            with torch.no_grad():
                attend(q, k, v)
    else:
        def step():
            attend(q, k, v).backward(grad)
    with context():
        step()  # compile / autotune, kept out of both memory and timing
        for t in inputs:
            t.grad = None
        peak = _peak_mib(step, inputs) if cuda else None
        if cuda:
            import triton.testing
            ms = triton.testing.do_bench(step, warmup=config.warmup, rep=config.rep,
                                         grad_to_none=list(inputs), return_mode="median")
        else:
            ms = _time_cpu(step, inputs, config.warmup, config.rep)
    if not (ms > 0 and math.isfinite(ms)):
        raise RuntimeError(f"timer returned {ms} ms")
    flops = attention_flops(shape.batch, shape.seqlen, shape.heads, shape.headdim, shape.causal, mode)
    return {"ms": ms, "tflops": flops / ms / 1e9, "peak_mib": peak, "flops": flops}


def _reason(exc: BaseException, caught) -> str:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(exc, oom) or "out of memory" in str(exc).lower():
        return "out of memory"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    # SDPA says why it refused a backend only through warnings; other warnings are noise here.
    hints = dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip())
    if hints and ("available kernel" in reason or "viable backend" in reason):
        reason += " (" + "; ".join(hints) + ")"
    return reason[:400]


def bench_impl(impl, shape, base, config, device) -> dict:
    """Measure one implementation on one shape: {mode: result or {"error": why}}."""
    cuda = device.type == "cuda"
    score_bytes = 4 * shape.batch * shape.heads * shape.seqlen ** 2
    if impl == "sdpa-math" and score_bytes > MATH_SCORE_LIMIT_BYTES:
        return {m: {"error": "skipped (memory)"} for m in config.modes}
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            attend, bhsd, context = _attention(impl, shape, device)
            inputs = [(t.transpose(1, 2).contiguous() if bhsd else t.clone()).requires_grad_()
                      for t in base]
            grad = torch.randn_like(inputs[0])
        except Exception as exc:
            return {m: {"error": _reason(exc, caught)} for m in config.modes}
        for mode in config.modes:
            del caught[:]
            try:
                results[mode] = _measure_mode(attend, context, inputs, grad, mode, shape, config, cuda)
            except Exception as exc:
                results[mode] = {"error": _reason(exc, caught)}
            if cuda:
                torch.cuda.empty_cache()  # after an OOM the cached blocks would starve what follows
    return results


# ---------------------------------------------------------------------- report

def _num(x) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def _table(header, rows) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) for c, w in zip(r, widths))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def format_results(rows) -> str:
    notes, table = {}, []

    def cell(result, key):
        if result is None:
            return "-"
        if "error" in result:
            mark = notes.setdefault(result["error"], len(notes) + 1)
            return f"n/a[{mark}]"
        value = result[key]
        return "-" if value is None else (_num(value) if key == "tflops" else f"{value:.0f}")

    for r in rows:
        res = [r["results"].get(m) for m in MODES]
        table.append([r["headdim"], r["seqlen"], "yes" if r["causal"] else "no", r["impl"],
                      *(cell(x, "tflops") for x in res), *(cell(x, "peak_mib") for x in res)])
    text = _table(["D", "S", "causal", "impl", "fwd TFLOP/s", "fwd+bwd TFLOP/s",
                   "peak MiB fwd", "peak MiB fwd+bwd"], table)
    if notes:
        text += "\n" + "\n".join(f"[{n}] {why}" for why, n in notes.items())
    return text


def ratios(rows, config) -> list:
    """flashtron's throughput over each baseline's, per shape and mode (>1: flashtron faster)."""
    by_key = {(r["headdim"], r["seqlen"], r["causal"], r["impl"]): r["results"] for r in rows}
    out = []
    for (d, s, c, impl), res in by_key.items():
        if impl != "flashtron":
            continue
        for mode in config.modes:
            for base in (i for i in config.impls if i != "flashtron"):
                mine, theirs = res.get(mode, {}), by_key[(d, s, c, base)].get(mode, {})
                ok = "tflops" in mine and "tflops" in theirs
                out.append({"headdim": d, "seqlen": s, "causal": c, "mode": mode, "baseline": base,
                            "ratio": mine["tflops"] / theirs["tflops"] if ok else None})
    return out


def format_ratios(ratio_rows, config) -> str:
    baselines = [i for i in config.impls if i != "flashtron"]
    grouped = {}
    for r in ratio_rows:
        grouped.setdefault((r["headdim"], r["seqlen"], r["causal"], r["mode"]), {})[r["baseline"]] = r["ratio"]
    table = [[d, s, "yes" if c else "no", m, *("n/a" if g.get(b) is None else f"{g[b]:.2f}x" for b in baselines)]
             for (d, s, c, m), g in grouped.items()]
    return _table(["D", "S", "causal", "mode", *(f"vs {b}" for b in baselines)], table)


# ----------------------------------------------------------------------- chart

def write_chart(rows, config, path, title) -> None:
    groups = list(dict.fromkeys((r["headdim"], r["seqlen"], r["causal"]) for r in rows))
    values = {(r["headdim"], r["seqlen"], r["causal"], r["impl"], m): res.get("tflops")
              for r in rows for m, res in r["results"].items()}
    try:
        _write_mpl_chart(groups, values, config, path, title)
    except Exception as exc:  # no matplotlib, or it broke: a chart is still wanted
        if not isinstance(exc, ImportError):
            print(f"matplotlib failed ({exc!r}); using the built-in PNG writer", file=sys.stderr)
        _write_png_chart(groups, values, config, path, title)


def _write_mpl_chart(groups, values, config, path, title) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8.0, 0.25 * len(groups) * len(config.impls) + 2), 4.0 * len(config.modes)))
    FigureCanvasAgg(fig)  # Agg, without touching pyplot's global backend
    width = 0.8 / len(config.impls)
    for n, mode in enumerate(config.modes):
        ax = fig.add_subplot(len(config.modes), 1, n + 1)
        for j, impl in enumerate(config.impls):
            heights = [values.get((*g, impl, mode)) or 0.0 for g in groups]
            ax.bar([i + (j - (len(config.impls) - 1) / 2) * width for i in range(len(groups))],
                   heights, width, label=impl)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"D={d}\nS={s}\n{'causal' if c else 'full'}" for d, s, c in groups], fontsize=7)
        ax.set_ylabel("TFLOP/s")
        ax.set_title(f"{mode} ({title})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.2)  # headroom so the legend does not cover bars
        ax.legend(fontsize=7, ncol=min(6, len(config.impls)), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# A 3x5 bitmap font: each glyph is five rows, each row an octal digit of 3 pixels.
_FONT = dict(zip(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-+./:=()_, ?",
    ("75557 26227 71747 71717 55711 74717 74757 71111 75757 75717 25755 65656 34443 65556 "
     "74647 74644 34553 55755 72227 11152 55655 44447 57755 65555 25552 65644 25563 65655 "
     "34216 72222 55557 55552 55775 55255 55222 71247 00700 02720 00002 11244 02020 07070 "
     "24442 21112 00007 00024 00000 71202").split()))
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127)]


class _Canvas:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x, y, w, h, color):
        x0, y0, x1, y1 = max(0, x), max(0, y), min(self.width, x + w), min(self.height, y + h)
        for row in range(y0, y1):
            start = (row * self.width + x0) * 3
            self.pixels[start:start + 3 * (x1 - x0)] = bytes(color) * (x1 - x0)

    def text(self, x, y, s, color=(0, 0, 0), scale=2):
        for ch in s.upper():
            for r, bits in enumerate(_FONT.get(ch, _FONT["?"])):
                for c in range(3):
                    if int(bits) >> (2 - c) & 1:
                        self.rect(x + c * scale, y + r * scale, scale, scale, color)
            x += 4 * scale

    def png(self) -> bytes:
        stride = self.width * 3
        raw = b"".join(b"\x00" + self.pixels[y * stride:(y + 1) * stride] for y in range(self.height))
        chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _write_png_chart(groups, values, config, path, title="") -> None:
    impls, bar, plot_h, left = config.impls, 8, 200, 72
    group_w = max(len(impls) * bar + 16, 56)
    panel_h = 24 + plot_h + 44
    legend_w = sum(30 + 8 * len(i) for i in impls)
    width = max(left + len(groups) * group_w + 16, left + legend_w, 640)
    canvas = _Canvas(width, 36 + len(config.modes) * panel_h)
    x = left
    for j, impl in enumerate(impls):  # legend
        canvas.rect(x, 10, 10, 10, _PALETTE[j % len(_PALETTE)])
        canvas.text(x + 14, 10, impl)
        x += 14 + 8 * len(impl) + 16
    for n, mode in enumerate(config.modes):
        top = 36 + n * panel_h
        canvas.text(left, top + 4, f"{mode} TFLOP/s  ({title})" if title else f"{mode} TFLOP/s")
        base_y = top + 24 + plot_h
        vmax = max([v for (*_, m), v in values.items() if m == mode and v] or [1.0])
        for tick in range(5):
            y = base_y - tick * plot_h // 4
            canvas.rect(left, y, width - left - 8, 1, (200, 200, 200) if tick else (0, 0, 0))
            label = f"{vmax * tick / 4:.3g}"
            canvas.text(left - 6 - 8 * len(label), y - 5, label)
        for g, (d, s, c) in enumerate(groups):
            gx = left + g * group_w + 8
            for j, impl in enumerate(impls):
                v = values.get((d, s, c, impl, mode))
                if v:
                    h = max(1, round(plot_h * v / vmax))
                    canvas.rect(gx + j * bar, base_y - h, bar - 1, h, _PALETTE[j % len(_PALETTE)])
            for line, txt in enumerate((f"D{d}", f"S{s}", "causal" if c else "full")):
                canvas.text(gx, base_y + 6 + 13 * line, txt)
    with open(path, "wb") as f:
        f.write(canvas.png())


# ------------------------------------------------------------------------- run

def run(config: BenchConfig, command: str = "flashtron bench") -> dict | None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    env = environment(cuda)
    print_header(env, command, cuda)
    print(f"dtype {config.dtype}, tokens B*S={config.tokens}, hidden H*D={config.hidden}\n", flush=True)
    dtype, rows = DTYPES[config.dtype], []
    todo = shapes(config)
    if not todo:
        print("nothing to run: every shape was skipped", file=sys.stderr)
        return None
    for i, shape in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {shape.label()} B={shape.batch} H={shape.heads}", file=sys.stderr, flush=True)
        torch.manual_seed(0)
        base = torch.randn(3, shape.batch, shape.seqlen, shape.heads, shape.headdim,
                           device=device, dtype=dtype).unbind(0)
        for impl in config.impls:
            results = bench_impl(impl, shape, base, config, device)
            rows.append({"headdim": shape.headdim, "seqlen": shape.seqlen, "causal": shape.causal,
                         "batch": shape.batch, "heads": shape.heads, "impl": impl, "results": results})
            summary = ", ".join(f"{m} " + (_num(r["tflops"]) if "tflops" in r else "n/a")
                                for m, r in results.items())
            print(f"    {impl}: {summary}", file=sys.stderr, flush=True)
        del base
        if "flex" in config.impls:
            import torch._dynamo as dynamo
            dynamo.reset()  # Flex must compile afresh per shape, not reuse a dynamic graph
        if cuda:
            torch.cuda.empty_cache()
    ratio_rows = ratios(rows, config) if "flashtron" in config.impls else []
    print(format_results(rows))
    if ratio_rows:
        print("\nflashtron TFLOP/s / baseline TFLOP/s (>1: flashtron faster)")
        print(format_ratios(ratio_rows, config))
    report = {**env, "command": command, "cpu_note": None if cuda else CPU_NOTE,
              "config": dataclasses.asdict(config), "results": rows, "ratios": ratio_rows}
    os.makedirs(config.out, exist_ok=True)
    json_path, png_path = os.path.join(config.out, "bench.json"), os.path.join(config.out, "bench.png")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, allow_nan=False, default=str)
    write_chart(rows, config, png_path, f"{env['device']}, {config.dtype}")
    print(f"\nwrote {json_path} and {png_path}")
    return report
