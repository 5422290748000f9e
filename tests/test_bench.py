"""Tests of the ``flashtron bench`` command: a tiny CPU benchmark driven end to
end through :func:`flashtron.cli.main` (the stdout table, bench.json and the PNG
chart, decoded by hand so no imaging library is needed), and the FLOP counting
that turns times into TFLOP/s. Where ``flashtron.flash_attn_func`` is not there
yet, a torch SDPA stand-in takes its place so the harness itself is still tested.
"""

import json
import math
import struct
import warnings
import zlib

import pytest
import torch

import flashtron
from flashtron import bench, cli


@pytest.fixture
def attention_func(monkeypatch):
    try:
        from flashtron import flash_attn_func  # noqa: F401
        return "real"
    except ImportError:
        pass

    def standin(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=softmax_scale)
        return out.transpose(1, 2)

    warnings.warn("flashtron.flash_attn_func missing: benchmarking an SDPA stand-in")
    monkeypatch.setattr(flashtron, "flash_attn_func", standin, raising=False)
    return "stand-in"


def test_attention_flops():
    b, s, h, d = 2, 1024, 16, 128
    fwd = 4 * b * s * s * h * d
    assert bench.attention_flops(b, s, h, d, causal=False) == fwd
    assert bench.attention_flops(b, s, h, d, causal=True) == fwd / 2
    assert bench.attention_flops(b, s, h, d, causal=False, mode="fwd+bwd") == 3.5 * fwd
    assert bench.attention_flops(b, s, h, d, causal=True, mode="fwd+bwd") == 1.75 * fwd
    # flash-attn's default sweep keeps B*S*H*D fixed, so FLOPs grow linearly in S.
    assert bench.attention_flops(16384 // 512, 512, 2048 // 64, 64, False) * 2 == \
        bench.attention_flops(16384 // 1024, 1024, 2048 // 64, 64, False)


def _png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert width > 0 and height > 0 and b"IEND" in chunks
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + math.ceil(width * channels * depth / 8))
    return width, height


def _bench(tmp_path, capsys, *options):
    rc = cli.main(["bench", "--tokens", "128", "--hidden", "64", "--headdims", "32", "--seqlens", "32,64",
                   "--warmup", "1", "--rep", "3", "--out", str(tmp_path), *options])
    assert rc == 0
    out = capsys.readouterr().out
    for column in ("fwd TFLOP/s", "fwd+bwd TFLOP/s", "peak MiB fwd", "vs sdpa-math"):
        assert column in out
    table = [line.split() for line in out.splitlines() if line.split()[3:4] == ["flashtron"]]
    assert {tuple(r[:3]) for r in table} == {("32", s, c) for s in ("32", "64") for c in ("yes", "no")}

    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["torch"] == torch.__version__ and report["date"] and report["device"]
    assert report["command"].startswith("flashtron bench")
    ours = [r for r in report["results"] if r["impl"] == "flashtron"]
    assert len(ours) == 4
    for row in ours:
        assert row["batch"] == 128 // row["seqlen"] and row["heads"] == 2
        for mode in ("fwd", "fwd+bwd"):
            result = row["results"][mode]
            assert math.isfinite(result["tflops"]) and result["tflops"] > 0
            assert math.isfinite(result["ms"]) and result["ms"] > 0
    assert any(r["ratio"] and r["ratio"] > 0 for r in report["ratios"] if r["baseline"] == "sdpa-math")
    _png_size((tmp_path / "bench.png").read_bytes())
    return out, report


def test_cpu_bench_end_to_end(tmp_path, capsys, monkeypatch, attention_func):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path, also on a GPU machine
    out, report = _bench(tmp_path, capsys, "--impls", "flashtron,sdpa-math,sdpa-cudnn")
    assert "CPU run" in out and report["cuda"] is False and report["cpu_note"]
    # cuDNN cannot run on a CPU: reported, not fatal.
    cudnn = [r for r in report["results"] if r["impl"] == "sdpa-cudnn"]
    assert cudnn and all("error" in r["results"]["fwd"] for r in cudnn)
    assert "n/a[1]" in out and "\n[1] " in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bench_end_to_end(tmp_path, capsys, attention_func):
    _, report = _bench(tmp_path, capsys, "--impls", "flashtron,sdpa-flash,sdpa-math", "--dtype", "bf16")
    assert report["cuda"] is True
    for row in report["results"]:
        if row["impl"] == "flashtron":
            assert all(row["results"][m]["peak_mib"] > 0 for m in ("fwd", "fwd+bwd"))


def test_fallback_png_chart(tmp_path):
    rows = [{"headdim": 64, "seqlen": s, "causal": c, "impl": impl,
             "results": {"fwd": {"tflops": 1.0 + s / 100}, "fwd+bwd": {"error": "out of memory"}}}
            for s in (512, 16384) for c in (False, True) for impl in bench.IMPLS]
    groups = list(dict.fromkeys((r["headdim"], r["seqlen"], r["causal"]) for r in rows))
    values = {(r["headdim"], r["seqlen"], r["causal"], r["impl"], m): res.get("tflops")
              for r in rows for m, res in r["results"].items()}
    path = tmp_path / "chart.png"
    bench._write_png_chart(groups, values, bench.BenchConfig(), path)
    width, height = _png_size(path.read_bytes())
    assert width >= 640 and height > 200


def test_cpu_bench_decode_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from flashtron.cli import main
    assert main(["bench-decode", "--cases", "2x40", "--heads", "4", "--heads-kv", "2", "--headdim", "16",
                 "--page-size", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "bench-decode.json").read_text())
    assert "CPU run" in out and report["config"]["cases"] == [[2, 40]]
    impls = {r["impl"] for r in report["results"]}
    assert impls == {"flashtron", "flashtron-paged3"}
    assert all(r["ms"] > 0 for r in report["results"])
    assert main(["bench-decode", "--cases", "2by40"]) == 2


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_bench_decode_page_tables(order):
    from flashtron.bench_decode import page_table, to_pages
    table = page_table(3, 40, 16, torch.Generator().manual_seed(0), "cpu", order)
    assert table.shape == (3, 3) and table.dtype == torch.int32
    assert sorted(table.flatten().tolist()) == list(range(9))  # every page used once
    if order == "sequential":
        assert table.flatten().tolist() == list(range(9))
    cache = torch.randn(3, 40, 2, 8)
    pages = to_pages(cache, table, 16)
    for b in range(3):
        rows = torch.cat([pages[p] for p in table[b].tolist()])[:40]
        assert torch.equal(rows, cache[b])
