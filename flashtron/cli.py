"""Command-line front of flashtron: ``flashtron COMMAND [options]`` (also
``python -m flashtron``). Each subcommand gets its own argparse sub-parser and a
handler; today there is ``bench``, which narrows the benchmark's default sweep
(flash-attn's settings on a GPU, a tiny CPU sweep without one) from its options
and hands the result to :func:`flashtron.bench.run`. Options left out keep the
device's defaults, so the same command line works on a GPU and a CPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys


def _int_list(text):
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choice_list(choices):
    def parse(text):
        values = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
        unknown = [x for x in values if x not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return values
    return parse


def _add_bench(commands) -> None:
    from flashtron import bench

    p = commands.add_parser(
        "bench", help="forward / forward+backward TFLOP/s and memory against SDPA and Flex",
        description="Benchmark flashtron against torch SDPA backends and FlexAttention. "
                    "Defaults follow flash-attn's benchmark on a GPU (B*S=16384, H*D=2048, D in "
                    "64,128, S from 512 to 16384, causal and not, bf16); without a GPU a tiny "
                    "fp32 CPU run checks that everything works.")
    p.add_argument("--headdims", type=_int_list, metavar="D,...", help="head dimensions (default 64,128)")
    p.add_argument("--seqlens", type=_int_list, metavar="S,...",
                   help="sequence lengths (default 512,1024,2048,4096,8192,16384)")
    p.add_argument("--causal", choices=("both", "true", "false"), help="causal masking (default both)")
    p.add_argument("--impls", type=_choice_list(bench.IMPLS + tuple(bench.VARIANTS)), metavar="IMPL,...",
                   help=f"implementations, from {','.join(bench.IMPLS)} (default all), and the opt-in "
                        f"variant rows {','.join(bench.VARIANTS)}")
    p.add_argument("--modes", type=_choice_list(bench.MODES), metavar="MODE,...",
                   help="fwd and/or fwd+bwd (default both)")
    p.add_argument("--dtype", choices=tuple(bench.DTYPES), help="element type (default bf16; fp32 on CPU)")
    p.add_argument("--tokens", type=int, help="total tokens B*S; B = tokens // S (default 16384)")
    p.add_argument("--hidden", type=int, help="H*D; H = hidden // D (default 2048)")
    p.add_argument("--out", metavar="DIR", help="where bench.json and bench.png go (default ./bench-out)")
    p.add_argument("--warmup", type=float, metavar="MS", help="warm-up time per measurement in ms (default 25)")
    p.add_argument("--rep", type=float, metavar="MS", help="timed repetitions per measurement in ms (default 100)")
    p.set_defaults(handler=_run_bench)


def _add_bench_varlen(commands) -> None:
    p = commands.add_parser(
        "bench-varlen", help="variable-length batch: varlen vs dense flashtron vs padded SDPA",
        description="Time flash_attn_varlen_func on a batch of random-length sequences against dense "
                    "flashtron at the mean length and torch SDPA on the batch padded to the longest "
                    "sequence. Defaults: 64 sequences of 128 to 4096 tokens, H=16, D=128, bf16, causal "
                    "(a tiny fp32 run without a GPU).")
    p.add_argument("--batch", type=int, help="number of sequences (default 64)")
    p.add_argument("--min-len", dest="min_len", type=int, help="shortest length drawn (default 128)")
    p.add_argument("--max-len", dest="max_len", type=int, help="longest length drawn (default 4096)")
    p.add_argument("--heads", type=int, help="heads (default 16)")
    p.add_argument("--headdim", type=int, help="head dim (default 128)")
    p.add_argument("--causal", choices=("true", "false"), help="causal masking (default true)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="element type (default bf16; fp32 on CPU)")
    p.add_argument("--seed", type=int, help="seed of the length draw (default 0)")
    p.add_argument("--out", metavar="DIR", help="where bench-varlen.json goes (default ./bench-out)")
    p.set_defaults(handler=_run_bench_varlen)


def _run_bench_varlen(args, argv) -> int:
    import torch
    from flashtron import bench_varlen

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(bench_varlen.VarlenConfig)
             if getattr(args, f.name, None) is not None}
    if "causal" in given:
        given["causal"] = given["causal"] == "true"
    config = dataclasses.replace(bench_varlen.default_config(torch.cuda.is_available()), **given)
    if not 1 <= config.min_len <= config.max_len or config.batch < 1:
        print("need 1 <= --min-len <= --max-len and --batch >= 1", file=sys.stderr)
        return 2
    bench_varlen.run(config, command=shlex.join(["flashtron", *argv]))
    return 0


def _add_bench_decode(commands) -> None:
    p = commands.add_parser(
        "bench-decode", help="KV-cache decoding: K+V bytes read per second vs copy bandwidth and SDPA",
        description="Time flash_attn_with_kvcache for one query token against contiguous and paged caches "
                    "(CUDA-graph replay), with torch SDPA's flash and cuDNN backends, and report K+V GB/s "
                    "over the copy bandwidth measured in the same run. Defaults: H=32, Hk=8, D=128, bf16, "
                    "(B, Sk) in (1, 128k), (64, 4k), (1, 8k), (8, 32k), page size 16.")
    p.add_argument("--cases", help="comma-separated BxSK pairs, e.g. 1x131072,64x4096")
    p.add_argument("--heads", type=int, help="query heads (default 32)")
    p.add_argument("--heads-kv", dest="heads_kv", type=int, help="key/value heads (default 8)")
    p.add_argument("--headdim", type=int, help="head dim (default 128)")
    p.add_argument("--page-size", dest="page_size", type=int, help="page size of the paged cache (default 16)")
    p.add_argument("--page-order", dest="page_order", choices=("random", "sequential"),
                   help="how the paged cache's pages are laid out: scattered at random (default) or in order")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="element type (default bf16; fp32 on CPU)")
    p.add_argument("--out", metavar="DIR", help="where bench-decode.json goes (default ./bench-out)")
    p.set_defaults(handler=_run_bench_decode)


def _run_bench_decode(args, argv) -> int:
    import torch
    from flashtron import bench_decode

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(bench_decode.DecodeConfig)
             if getattr(args, f.name, None) is not None}
    if "cases" in given:
        try:
            given["cases"] = tuple(tuple(int(x) for x in case.lower().split("x")) for case in given["cases"].split(","))
        except ValueError:
            print("--cases takes BxSK pairs, e.g. 1x131072,64x4096", file=sys.stderr)
            return 2
    config = dataclasses.replace(bench_decode.default_config(torch.cuda.is_available()), **given)
    bench_decode.run(config, command=shlex.join(["flashtron", *argv]))
    return 0


def _run_bench(args, argv) -> int:
    import torch
    from flashtron import bench

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(bench.BenchConfig)
             if getattr(args, f.name, None) is not None}
    if "causal" in given:
        given["causal"] = {"both": (False, True), "true": (True,), "false": (False,)}[given["causal"]]
    config = dataclasses.replace(bench.default_config(torch.cuda.is_available()), **given)
    report = bench.run(config, command=shlex.join(["flashtron", *argv]))
    return 0 if report is not None else 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="flashtron", description="flashtron: FlashAttention in Triton.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_bench(commands)
    _add_bench_varlen(commands)
    _add_bench_decode(commands)
    args = parser.parse_args(argv)
    return args.handler(args, argv)


if __name__ == "__main__":
    sys.exit(main())
