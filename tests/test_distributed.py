"""flashtron.distributed: ring attention over 2 and 3 CPU processes (gloo) against the whole sequence.

Each world size gets one pool of worker processes, started once for the module (spawn, a file
store in a tmp dir) and joined in a gloo group; a test sends a case to every rank, each rank
shards the same global inputs (drawn from the case's fresh seed), runs the ring function and its
backward, and gathers the outputs and gradients, which rank 0 sends back.  The test process then
holds them against single-process `flash_attn_func` on the whole sequence and against the
float64 oracle with flash-attn's 2x / 3x rule.  ring_flash_attn_varlen_func gets the same
treatment on packed batches (each sequence split across the ranks; `varlen_shard` / `varlen_gather`)
against flash_attn_varlen_func and the oracle one sequence at a time.  Planning (dense and packed),
merging and sharding are also tested in-process.  Run plainly, blocks take the PyTorch path; with
TRITON_INTERPRET=1, the Triton kernels under the interpreter, where sizes stay small and the main
dense matrix (world size x layout x causal x dtype) is cut to a covering half.
"""

import datetime
import io
import math
import os
import queue
import random
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flashtron import flash_attn_func, flash_attn_varlen_func, ops
from flashtron.distributed import (gather, ring_flash_attn_func, ring_flash_attn_kvpacked_func,
                                   ring_flash_attn_qkvpacked_func, ring_flash_attn_varlen_func,
                                   ring_flash_attn_varlen_kvpacked_func, ring_flash_attn_varlen_qkvpacked_func, shard,
                                   unshard, varlen_gather, varlen_shard, varlen_unshard, zigzag_ring_flash_attn_func,
                                   zigzag_ring_flash_attn_kvpacked_func, zigzag_ring_flash_attn_qkvpacked_func)
from flashtron.distributed import merge
from flashtron.distributed.block_plan import plan_step
from flashtron.distributed.layout import local_segments
from flashtron.distributed.varlen_plan import packed_calls
from reference import assert_within_rule, attention_reference, max_error, visible_mask
from test_flash_attn import reference_and_grads
from test_varlen import cu_seqlens_of

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FUNCTIONS = {
    ("contiguous", "none"): ring_flash_attn_func, ("zigzag", "none"): zigzag_ring_flash_attn_func,
    ("contiguous", "qkv"): ring_flash_attn_qkvpacked_func, ("zigzag", "qkv"): zigzag_ring_flash_attn_qkvpacked_func,
    ("contiguous", "kv"): ring_flash_attn_kvpacked_func, ("zigzag", "kv"): zigzag_ring_flash_attn_kvpacked_func,
}
VARLEN_FUNCTIONS = {"none": ring_flash_attn_varlen_func, "qkv": ring_flash_attn_varlen_qkvpacked_func,
                    "kv": ring_flash_attn_varlen_kvpacked_func}
CASE_TIMEOUT_S = 120


# ---------------------------------------------------------------------------------------------
# What the workers run.  Every rank builds the same global inputs from the case's seed.

def global_inputs(spec):
    """q, k, v, dout of the whole sequence, (B, S, H, D) and (B, S, Hk, D), in the case's dtype."""
    batch, seqlen, num_heads, num_heads_kv, head_dim = spec["shape"]
    generator = torch.Generator().manual_seed(spec["seed"])
    make = lambda heads: torch.randn(batch, seqlen, heads, head_dim, generator=generator).to(DTYPES[spec["dtype"]])
    q, k, v, dout = make(num_heads), make(num_heads_kv), make(num_heads_kv), make(num_heads)
    if spec.get("one_hot_v"):
        # v_j = e_j: out row i is then row i of the (dropped) probability matrix.
        v = torch.eye(seqlen, head_dim).expand(batch, num_heads_kv, seqlen, head_dim).transpose(1, 2)
        v = v.to(DTYPES[spec["dtype"]]).contiguous()
    return q, k, v, dout


def _case_group(spec, rank, groups):
    """(group, its members) for the case: the default group, ranks 1 and 2 only, or each rank alone."""
    which = spec.get("group", "world")
    if which == "world":
        return None, list(range(dist.get_world_size()))
    if which == "pair":
        return groups["pair"], [1, 2]
    return groups["single"][rank], [rank]


def _ring_call(spec, group, q, k, v, **kwargs):
    layout, packed = spec["layout"], spec.get("packed", "none")
    function = FUNCTIONS[(layout, packed)]
    options = dict(causal=spec["causal"], window_size=tuple(spec.get("window", (-1, -1))),
                   dropout_p=spec.get("dropout_p", 0.0), return_attn_probs=True, group=group,
                   softcap=spec.get("softcap", 0.0), softmax_scale=spec.get("softmax_scale"), **kwargs)
    if packed == "qkv":
        leaves = (torch.stack((q, k, v), dim=2).requires_grad_(),)
    elif packed == "kv":
        leaves = (q.requires_grad_(), torch.stack((k, v), dim=2).requires_grad_())
    else:
        leaves = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_())
    out, lse, s_dmask = function(*leaves, **options)
    assert s_dmask is None
    return leaves, out, lse


def ring_case(rank, spec, groups):
    """One forward and backward of the ring; the group's rank 0 returns the gathered results."""
    group, members = _case_group(spec, rank, groups)
    if rank not in members:
        return None
    group_rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    layout = spec["layout"]
    parts = [shard(t, group_rank, world_size, layout).clone() for t in global_inputs(spec)]
    leaves, out, lse = _ring_call(spec, group, *parts[:3])
    assert out.shape == parts[0].shape and out.dtype == parts[0].dtype
    grads = torch.autograd.grad(out, leaves, parts[3])
    result = {"out": gather(out, group, layout), "lse": gather(lse, group, layout, dim=2)}
    if spec.get("packed") == "qkv":
        dq, dk, dv = gather(grads[0], group, layout).unbind(2)
    elif spec.get("packed") == "kv":
        dq = gather(grads[0], group, layout)
        dk, dv = gather(grads[1], group, layout).unbind(2)
    else:
        dq, dk, dv = (gather(g, group, layout) for g in grads)
    result.update(dq=dq, dk=dk, dv=dv)
    return result if group_rank == 0 else None


def dropout_case(rank, spec, groups):
    """The mask (read through v = identity), then out and gradients twice from one seed, then once more."""
    world_size, layout = dist.get_world_size(), spec["layout"]
    results = {}
    torch.manual_seed(spec["seed"])  # the same on every rank: per-block seeds must still differ
    q, k, v, _ = (shard(t, rank, world_size, layout).clone() for t in global_inputs(dict(spec, one_hot_v=True)))
    _, out, _ = _ring_call(spec, None, q, k, v)
    results["probabilities"] = gather(out.detach(), None, layout)
    for run in ("first", "again"):
        torch.manual_seed(spec["seed"])
        q, k, v, dout = (shard(t, rank, world_size, layout).clone() for t in global_inputs(spec))
        leaves, out, lse = _ring_call(spec, None, q, k, v)
        grads = torch.autograd.grad(out, leaves, dout)
        results[run] = [gather(t, None, layout) for t in (out, *grads)] + [gather(lse, None, layout, dim=2)]
    _, out, _ = _ring_call(spec, None, q.detach(), k.detach(), v.detach())  # the generator's next seed
    results["next"] = [gather(out.detach(), None, layout)]
    return results if rank == 0 else None


def raising_case(rank, spec, groups):
    """Each rank's local length from spec['lengths'] (k's from spec['k_lengths'] when given) and keyword
    arguments from spec['kwargs'][rank]: every rank must raise, none may hang."""
    batch, _, num_heads, num_heads_kv, head_dim = spec["shape"]
    length = spec["lengths"][rank]
    q = torch.randn(batch, length, num_heads, head_dim)
    k, v = (torch.randn(batch, spec.get("k_lengths", spec["lengths"])[rank], num_heads_kv, head_dim)
            for _ in range(2))
    try:
        FUNCTIONS[(spec["layout"], "none")](q, k, v, causal=True, **spec.get("kwargs", {}).get(rank, {}))
    except Exception as error:  # noqa: BLE001 - the type is what the test checks
        return type(error).__name__, str(error)
    return None


def varlen_global_inputs(spec):
    """q, k, v, dout of the whole packed batch ((total, H, D) and (total, Hk, D)) and its cu_seqlens."""
    lengths, (num_heads, num_heads_kv, head_dim) = spec["lengths"], spec["heads"]
    total = sum(lengths)
    generator = torch.Generator().manual_seed(spec["seed"])
    make = lambda heads: torch.randn(total, heads, head_dim, generator=generator).to(DTYPES[spec["dtype"]])
    q, k, v, dout = make(num_heads), make(num_heads_kv), make(num_heads_kv), make(num_heads)
    if spec.get("one_hot_v"):
        # Within each sequence v_j = e_j: out row i is then row i of the sequence's (dropped) probabilities.
        v = torch.cat([torch.eye(length, head_dim) for length in lengths])[:, None].expand(total, num_heads_kv,
                                                                                          head_dim)
        v = v.to(DTYPES[spec["dtype"]]).contiguous()
    return q, k, v, dout, cu_seqlens_of(lengths)


def _varlen_ring_call(spec, cu_seqlens, max_seqlen, q, k, v):
    packed = spec.get("packed", "none")
    options = dict(causal=spec["causal"], window_size=tuple(spec.get("window", (-1, -1))),
                   dropout_p=spec.get("dropout_p", 0.0), return_attn_probs=True, softcap=spec.get("softcap", 0.0),
                   softmax_scale=spec.get("softmax_scale"))
    if packed == "qkv":
        leaves = (torch.stack((q, k, v), dim=1).requires_grad_(),)
    elif packed == "kv":
        leaves = (q.requires_grad_(), torch.stack((k, v), dim=1).requires_grad_())
    else:
        leaves = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_())
    out, lse, s_dmask = VARLEN_FUNCTIONS[packed](*leaves, cu_seqlens, max_seqlen, **options)
    assert s_dmask is None
    return leaves, out, lse


def _varlen_ring_run(rank, spec, one_hot_v=False):
    """Shard the case's batch, run the ring forward and backward: (leaves, out, lse, grads, global cu_seqlens)."""
    world_size = dist.get_world_size()
    *tensors, cu_seqlens = varlen_global_inputs(dict(spec, one_hot_v=one_hot_v))
    parts = [varlen_shard(t, cu_seqlens, rank, world_size)[0].clone() for t in tensors]
    local_cu_seqlens = varlen_shard(tensors[0], cu_seqlens, rank, world_size)[1]
    max_seqlen = max(spec["lengths"]) // world_size + spec.get("max_seqlen_slack", 0)
    leaves, out, lse = _varlen_ring_call(spec, local_cu_seqlens, max_seqlen, *parts[:3])
    assert out.shape == parts[0].shape and out.dtype == parts[0].dtype
    assert lse.shape == (parts[0].shape[1], parts[0].shape[0]) and lse.dtype == torch.float32
    grads = torch.autograd.grad(out, leaves, parts[3]) if not one_hot_v else None
    return leaves, out, lse, grads, cu_seqlens


def varlen_case(rank, spec, groups):
    """ring_flash_attn_varlen_func's forward and backward; rank 0 returns the gathered results."""
    _, out, lse, grads, cu_seqlens = _varlen_ring_run(rank, spec)
    result = {"out": varlen_gather(out, cu_seqlens), "lse": varlen_gather(lse, cu_seqlens, dim=1)}
    gathered = [varlen_gather(g, cu_seqlens) for g in grads]
    if spec.get("packed") == "qkv":
        gathered = list(gathered[0].unbind(1))
    elif spec.get("packed") == "kv":
        gathered = [gathered[0], *gathered[1].unbind(1)]
    result.update(zip(("dq", "dk", "dv"), gathered))
    return result if rank == 0 else None


def varlen_dropout_case(rank, spec, groups):
    """dropout_case for the packed batch: the mask through v = identity per sequence, then two runs
    from one seed, then the generator's next draw."""
    results = {}
    torch.manual_seed(spec["seed"])
    _, out, _, _, cu_seqlens = _varlen_ring_run(rank, spec, one_hot_v=True)
    results["probabilities"] = varlen_gather(out.detach(), cu_seqlens)
    for run in ("first", "again"):
        torch.manual_seed(spec["seed"])
        _, out, lse, grads, _ = _varlen_ring_run(rank, spec)
        results[run] = [varlen_gather(t, cu_seqlens) for t in (out, *grads)] + [varlen_gather(lse, cu_seqlens, dim=1)]
    _, out, _, _, _ = _varlen_ring_run(rank, spec)
    results["next"] = [varlen_gather(out.detach(), cu_seqlens)]
    return results if rank == 0 else None


def varlen_raising_case(rank, spec, groups):
    """Each rank's own local cu_seqlens from spec['cu_seqlens'][rank]: every rank must raise, none may hang."""
    num_heads, num_heads_kv, head_dim = spec["heads"]
    cu_seqlens = torch.tensor(spec["cu_seqlens"][rank], dtype=torch.int32)
    total = cu_seqlens[-1].item()
    q = torch.randn(total, num_heads, head_dim)
    k, v = (torch.randn(total, num_heads_kv, head_dim) for _ in range(2))
    max_seqlen = spec["max_seqlen"][rank] if isinstance(spec["max_seqlen"], tuple) else spec["max_seqlen"]
    try:
        ring_flash_attn_varlen_func(q, k, v, cu_seqlens, max_seqlen, causal=True)
    except Exception as error:  # noqa: BLE001 - the type is what the test checks
        return type(error).__name__, str(error)
    return None


CASES = {"ring": ring_case, "dropout": dropout_case, "raising": raising_case, "varlen": varlen_case,
         "varlen_dropout": varlen_dropout_case, "varlen_raising": varlen_raising_case}


def _serve(rank, world_size, store_path, tasks, results):
    """A worker: join the group, then run cases until told to stop."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=CASE_TIMEOUT_S))
    # Subgroups are created collectively, by every rank, in the same order.
    groups = {"single": [dist.new_group([r]) for r in range(world_size)]}
    if world_size >= 3:
        groups["pair"] = dist.new_group([1, 2])
    while (task := tasks.get()) is not None:
        case, spec = task
        try:
            value = CASES[case](rank, spec, groups)
            buffer = io.BytesIO()
            torch.save(value, buffer)
            results.put((rank, True, buffer.getvalue()))
        except BaseException:  # noqa: BLE001 - reported to the test process
            results.put((rank, False, traceback.format_exc()))


class Workers:
    """`world_size` processes in one gloo group, serving cases sent from the test process."""

    def __init__(self, world_size, store_path):
        context = mp.get_context("spawn")
        self.world_size = world_size
        self.tasks = [context.SimpleQueue() for _ in range(world_size)]
        self.results = context.Queue()
        self.processes = [context.Process(target=_serve, args=(rank, world_size, store_path, self.tasks[rank],
                                                               self.results), daemon=True)
                          for rank in range(world_size)]
        for process in self.processes:
            process.start()
        self.broken = False

    def submit(self, case, spec):
        for tasks in self.tasks:
            tasks.put((case, spec))

    def collect(self):
        """Every rank's returned value, in rank order; a worker's exception fails the test."""
        replies, deadline = {}, time.monotonic() + CASE_TIMEOUT_S
        while len(replies) < self.world_size:
            try:
                rank, ok, payload = self.results.get(timeout=1.0)
                replies[rank] = (ok, payload)
            except queue.Empty:
                dead = [rank for rank, p in enumerate(self.processes) if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    self.broken = True
                    pytest.fail(f"workers of world size {self.world_size}: ranks {dead} died or the case timed "
                                f"out; replies came from ranks {sorted(replies)}")
        failures = [f"rank {rank}:\n{payload}" for rank, (ok, payload) in sorted(replies.items()) if not ok]
        if failures:
            pytest.fail("\n".join(failures))
        return [torch.load(io.BytesIO(replies[rank][1]), weights_only=False) for rank in range(self.world_size)]

    def close(self):
        for tasks in self.tasks:
            tasks.put(None)
        for process in self.processes:
            # Leaving the gloo group can take seconds; the workers hold nothing worth a clean exit.
            process.join(timeout=0.5)
            if process.is_alive():
                process.kill()


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """world size -> Workers; both pools start at once (their start-up overlaps)."""
    pools = {}

    def start(world_size):
        pools[world_size] = Workers(world_size, str(tmp_path_factory.mktemp(f"ring{world_size}") / "store"))

    for world_size in (2, 3):
        start(world_size)

    def get(world_size):
        if pools[world_size].broken:
            pools[world_size].close()
            start(world_size)
        return pools[world_size]

    yield get
    for pool in pools.values():
        pool.close()


def fresh_seed():
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    return seed


# ---------------------------------------------------------------------------------------------
# What the test process checks.

def single_process_and_references(spec):
    """flash_attn_func on the whole sequence, the float64 truth and plain PyTorch in the input dtype:
    each as (out, lse or None, (dq, dk, dv))."""
    q, k, v, dout = global_inputs(spec)
    variants = dict(window_size=tuple(spec.get("window", (-1, -1))), softcap=spec.get("softcap", 0.0))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    scale = spec.get("softmax_scale")
    out, lse, _ = flash_attn_func(*leaves, causal=spec["causal"], softmax_scale=scale, return_attn_probs=True,
                                  **variants)
    single = out, lse, torch.autograd.grad(out, leaves, dout)
    truth = reference_and_grads(q, k, v, dout, spec["causal"], True, scale, **variants)
    plain = reference_and_grads(q, k, v, dout, spec["causal"], False, scale, **variants)
    return single, truth, plain


def rounding_slack(dtype, world_size):
    """The ring's one extra source of error, relative to the values' magnitude: each block call
    returns its share of out, dq, dk and dv rounded to the input dtype before the float32 merge,
    so a result carries up to world_size more roundings (half an ulp each) than one call's."""
    return 0.0 if dtype == torch.float32 else world_size * torch.finfo(dtype).eps / 2


def check_ring_result(result, single, truth, plain, world_size):
    """The ring's gathered results within flash-attn's rule of the truth (allowing `rounding_slack`);
    and off single-process flashtron by no more than one factor more than plain PyTorch is."""
    names = ("out", "dq", "dk", "dv")
    ours = [result[name] for name in names]
    for index, name in enumerate(names):
        single_t = single[0] if index == 0 else single[2][index - 1]
        truth_t = truth[0] if index == 0 else truth[2][index - 1]
        plain_t = plain[0] if index == 0 else plain[2][index - 1]
        factor = 2 if index == 0 else 3
        assert ours[index].shape == truth_t.shape and ours[index].dtype == single_t.dtype, name
        slack = 1e-5 + rounding_slack(single_t.dtype, world_size)
        assert_within_rule(name, ours[index], truth_t, plain_t, factor, slack)
        assert_within_rule(f"{name} (against single-process flashtron)", ours[index], single_t, plain_t, factor + 1,
                           slack)
    lse, truth_lse = result["lse"], truth[1]
    assert lse.dtype == torch.float32 and torch.equal(torch.isinf(lse), torch.isinf(truth_lse))
    finite = torch.isfinite(truth_lse)
    assert max_error(lse[finite], truth_lse[finite]) < 1e-4
    assert max_error(lse[finite], single[1][finite]) < 1e-4


def run_ring(workers, world_size, **spec):
    spec = dict(seed=fresh_seed(), **spec)
    pool = workers(world_size)
    pool.submit("ring", spec)
    expected = single_process_and_references(spec)  # computed while the workers run
    result = next(value for value in pool.collect() if value is not None)
    ring_size = {"world": world_size, "pair": 2, "single": 1}[spec.get("group", "world")]
    check_ring_result(result, *expected, ring_size)


# (world size, (batch, global seqlen, heads, kv heads, head dim)): odd chunk lengths (9 and 7 rows per
# zigzag chunk), GQA and MQA, odd head dims.
SHAPES = {
    ("float32", 2): (1, 36, 2, 1, 59), ("float32", 3): (1, 42, 2, 1, 40),
    ("bfloat16", 2): (2, 36, 1, 1, 40), ("bfloat16", 3): (1, 42, 2, 1, 24),
}


MAIN_CASES = [(world_size, layout, causal, dtype) for world_size in (2, 3) for layout in ("contiguous", "zigzag")
              for causal in (False, True) for dtype in ("float32", "bfloat16")]
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    # The interpreter runs the same ring (pure Python above the kernels) at a second a case: there,
    # each (layout, causal, dtype) once, world sizes alternating so every pair of them meets both.
    MAIN_CASES = [(world_size, layout, causal, dtype) for world_size, layout, causal, dtype in MAIN_CASES
                  if (world_size == 3) == (causal == (dtype == "float32"))]


@pytest.mark.parametrize("world_size,layout,causal,dtype", MAIN_CASES)
def test_ring_matches_whole_sequence(workers, world_size, layout, causal, dtype):
    run_ring(workers, world_size, shape=SHAPES[(dtype, world_size)], dtype=dtype, layout=layout, causal=causal)


# Sliding windows (exact: the plan turns global bands into local ones), softcap with a softmax_scale, the packed forms,
# float16, a subgroup whose ranks are not the global ones, and a ring of one.
VARIANT_CASES = {
    "window-causal-zigzag": (3, dict(shape=(1, 42, 2, 1, 32), dtype="float32", layout="zigzag", causal=True,
                                     window=(10, -1))),
    "window-two-sided-contiguous": (2, dict(shape=(1, 36, 2, 2, 48), dtype="float16", layout="contiguous",
                                            causal=False, window=(5, 12))),
    "window-two-sided-zigzag": (3, dict(shape=(1, 30, 1, 1, 16), dtype="bfloat16", layout="zigzag",
                                        causal=False, window=(3, 20))),
    "softcap-and-scale": (3, dict(shape=(1, 42, 2, 1, 40), dtype="float32", layout="contiguous", causal=True,
                                  softcap=0.5, softmax_scale=0.7)),
    "qkvpacked": (2, dict(shape=(1, 36, 2, 2, 40), dtype="bfloat16", layout="zigzag", causal=True,
                          packed="qkv")),
    "kvpacked-gqa": (3, dict(shape=(1, 42, 4, 2, 40), dtype="float16", layout="contiguous", causal=True,
                             packed="kv")),
    "subgroup": (3, dict(shape=(1, 28, 2, 1, 40), dtype="float32", layout="zigzag", causal=True, group="pair")),
    "ring-of-one": (2, dict(shape=(1, 18, 2, 1, 40), dtype="bfloat16", layout="zigzag", causal=True,
                            group="single")),
}


@pytest.mark.parametrize("name", list(VARIANT_CASES))
def test_ring_variants(workers, name):
    world_size, spec = VARIANT_CASES[name]
    run_ring(workers, world_size, **spec)


def check_dropout_result(result, truth_out, plain_out, truth_grads, plain_grads, truth_lse):
    """A dropout ring run (forward, gradients and lse of its first draw; a repeat; the next draw)
    against the reference that used the same mask."""
    out, dq, dk, dv, lse = result["first"]
    assert_within_rule("out", out, truth_out, plain_out, 2)
    for name, ours, truth, plain in zip(("dq", "dk", "dv"), (dq, dk, dv), truth_grads, plain_grads):
        assert_within_rule(name, ours, truth, plain, 3)
    assert max_error(lse, truth_lse) < 1e-4, "dropout leaves the lse alone"

    # torch.manual_seed reproduces forward and backward bit for bit; the next draw differs.
    for first, again in zip(result["first"], result["again"]):
        assert torch.equal(first, again)
    assert not torch.equal(result["first"][0], result["next"][0])


@pytest.mark.parametrize("world_size,layout,causal,heads", [(2, "zigzag", True, (4, 2)),
                                                            (3, "contiguous", False, (2, 1))])
def test_dropout(workers, world_size, layout, causal, heads):
    seqlen = 6 * world_size
    dropout_p = 0.3
    spec = dict(seed=fresh_seed(), shape=(1, seqlen, *heads, seqlen), dtype="float32", layout=layout,
                causal=causal, dropout_p=dropout_p)
    pool = workers(world_size)
    pool.submit("dropout", spec)
    q, k, v, dout = global_inputs(spec)
    result = next(value for value in pool.collect() if value is not None)

    # Which probabilities survived, read off out with v = identity: (B, S, H, S) -> (B, H, Sq, Sk).
    dropped_probabilities = result["probabilities"].permute(0, 2, 1, 3).double()
    keep = dropped_probabilities != 0
    visible = visible_mask(seqlen, seqlen, -1, 0 if causal else -1, "cpu").expand_as(keep)
    assert not keep[~visible].any(), "a key outside the mask got weight"
    visible_count = visible.sum().item()
    dropped_fraction = 1 - keep[visible].sum().item() / visible_count
    # Five standard deviations of the binomial: a real bias fails, chance almost never does.
    assert abs(dropped_fraction - dropout_p) < 5 * math.sqrt(dropout_p * (1 - dropout_p) / visible_count)

    # Given that mask, out and the gradients are exact (flash-attn's rule against the float64 oracle).
    variants = dict(dropout_keep=keep, dropout_p=dropout_p)
    truth_out, truth_lse, truth_grads = reference_and_grads(q, k, v, dout, causal, True, **variants)
    identity = global_inputs(dict(spec, one_hot_v=True))[2]
    truth_probabilities, _ = attention_reference(q, k, identity, causal=causal, **variants)
    assert max_error(result["probabilities"], truth_probabilities) < 1e-5
    plain_out, _, plain_grads = reference_and_grads(q, k, v, dout, causal, False, **variants)
    check_dropout_result(result, truth_out, plain_out, truth_grads, plain_grads, truth_lse)


@pytest.mark.parametrize("world_size,layout,lengths,message", [
    (3, "zigzag", (6, 8, 6), "lengths differ"),
    (2, "contiguous", (5, 4), "lengths differ"),
    (2, "zigzag", (7, 7), "even"),
])
def test_bad_local_lengths_raise_on_every_rank(workers, world_size, layout, lengths, message):
    pool = workers(world_size)
    pool.submit("raising", dict(shape=(1, None, 2, 1, 16), layout=layout, lengths=lengths))
    for rank, raised in enumerate(pool.collect()):
        assert raised is not None, f"rank {rank} did not raise"
        assert raised[0] == "ValueError" and message in raised[1], raised


@pytest.mark.parametrize("bad,message", [
    (dict(k_lengths=(8, 6)), "k holds 6 positions"),
    (dict(kwargs={1: dict(dropout_p=1.5)}), "dropout_p must be in"),
    (dict(kwargs={1: dict(window_size=(-2, 0))}), "window_size"),
])
def test_one_rank_refused_raises_on_every_rank(workers, bad, message):
    """A check that fails on one rank only: that rank raises its own error, the others a ValueError naming it,
    and none waits in the ring for a rank that left."""
    pool = workers(2)
    pool.submit("raising", dict(shape=(1, None, 2, 1, 16), layout="contiguous", lengths=(8, 8), **bad))
    raised = pool.collect()
    assert raised[1] is not None and raised[1][0] == "ValueError" and message in raised[1][1], raised
    assert raised[0] is not None and raised[0][0] == "ValueError" and "rank(s) [1]" in raised[0][1], raised


# ---------------------------------------------------------------------------------------------
# ring_flash_attn_varlen_func: a packed batch, every sequence split across the ranks.

def packed_reference(q, k, v, dout, lengths, causal, upcast, softmax_scale=None, keep=None, dropout_p=0.0,
                     **variants):
    """The oracle one sequence at a time (a batch of one each), assembled in the packed layout:
    (out, lse (H, total), (dq, dk, dv)); keep: per sequence, the (1, H, L, L) dropout mask."""
    dtype = torch.float64 if upcast else q.dtype
    out = torch.zeros(q.shape, dtype=dtype)
    grads = [torch.zeros(t.shape, dtype=dtype) for t in (q, k, v)]
    lse = torch.full((q.shape[1], q.shape[0]), math.inf, dtype=torch.float64)
    start = 0
    for b, length in enumerate(lengths):
        rows = slice(start, start + length)
        start += length
        if length == 0:
            continue
        if keep is not None:
            variants = dict(variants, dropout_keep=keep[b], dropout_p=dropout_p)
        o, l, g = reference_and_grads(q[rows][None], k[rows][None], v[rows][None], dout[rows][None], causal, upcast,
                                      softmax_scale, **variants)
        out[rows] = o[0]
        lse[:, rows] = l[0]
        for grad, grad_b in zip(grads, g):
            grad[rows] = grad_b[0]
    return out, lse, tuple(grads)


def varlen_single_process_and_references(spec):
    """flash_attn_varlen_func on the whole batch, the float64 truth and plain PyTorch in the input dtype."""
    q, k, v, dout, cu_seqlens = varlen_global_inputs(spec)
    variants = dict(window_size=tuple(spec.get("window", (-1, -1))), softcap=spec.get("softcap", 0.0))
    scale, longest = spec.get("softmax_scale"), max(spec["lengths"])
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse, _ = flash_attn_varlen_func(*leaves, cu_seqlens, cu_seqlens, longest, longest, causal=spec["causal"],
                                         softmax_scale=scale, return_attn_probs=True, **variants)
    single = out, lse, torch.autograd.grad(out, leaves, dout)
    truth, plain = (packed_reference(q, k, v, dout, spec["lengths"], spec["causal"], upcast, scale, **variants)
                    for upcast in (True, False))
    return single, truth, plain


# (world size, case): lengths multiples of W, some of one token per rank, one empty; GQA and MQA, odd
# head dims; windows (the seqused calls, a band per local length); the packed forms, softcap.
VARLEN_CASES = {
    "2-causal-float32-gqa": (2, dict(lengths=[8, 2, 0, 22, 6], heads=(4, 2, 40), dtype="float32", causal=True)),
    "2-full-bfloat16": (2, dict(lengths=[14, 2, 10], heads=(2, 1, 24), dtype="bfloat16", causal=False)),
    "3-causal-bfloat16-mqa": (3, dict(lengths=[3, 15, 9, 6], heads=(3, 1, 32), dtype="bfloat16", causal=True)),
    "3-full-float32-larger-max_seqlen": (3, dict(lengths=[12, 3, 21], heads=(2, 2, 59), dtype="float32",
                                                 causal=False, max_seqlen_slack=3)),
    "3-window-causal": (3, dict(lengths=[3, 24, 9, 15], heads=(2, 1, 32), dtype="float32", causal=True,
                                window=(7, -1))),
    "2-window-two-sided-float16": (2, dict(lengths=[16, 4, 10], heads=(2, 2, 48), dtype="float16", causal=False,
                                           window=(3, 5))),
    "2-qkvpacked-softcap": (2, dict(lengths=[10, 6], heads=(2, 2, 40), dtype="bfloat16", causal=True, packed="qkv",
                                    softcap=0.5, softmax_scale=0.7)),
    "3-kvpacked": (3, dict(lengths=[6, 15], heads=(4, 2, 40), dtype="float16", causal=True, packed="kv")),
}


@pytest.mark.parametrize("name", list(VARLEN_CASES))
def test_varlen_ring_matches_whole_batch(workers, name):
    world_size, spec = VARLEN_CASES[name]
    spec = dict(spec, seed=fresh_seed())
    pool = workers(world_size)
    pool.submit("varlen", spec)
    expected = varlen_single_process_and_references(spec)  # computed while the workers run
    result = pool.collect()[0]
    check_ring_result(result, *expected, world_size)


def test_varlen_dropout(workers):
    world_size, dropout_p, lengths = 2, 0.3, [4, 12, 6]
    spec = dict(seed=fresh_seed(), lengths=lengths, heads=(2, 1, max(lengths)), dtype="float32", causal=True,
                dropout_p=dropout_p)
    pool = workers(world_size)
    pool.submit("varlen_dropout", spec)
    q, k, v, dout, _ = varlen_global_inputs(spec)
    result = pool.collect()[0]

    # Each sequence's surviving probabilities, read off out with v = identity: (L, H, L) -> (1, H, L, L).
    keep, start, visible_count, kept_count = [], 0, 0, 0
    for length in lengths:
        probabilities = result["probabilities"][start:start + length, :, :length].permute(1, 0, 2)[None]
        start += length
        keep.append(probabilities != 0)
        visible = visible_mask(length, length, -1, 0, "cpu").expand_as(keep[-1])
        assert not keep[-1][~visible].any(), "a key outside the mask got weight"
        visible_count += visible.sum().item()
        kept_count += keep[-1][visible].sum().item()
    dropped_fraction = 1 - kept_count / visible_count
    # Five standard deviations of the binomial: a real bias fails, chance almost never does.
    assert abs(dropped_fraction - dropout_p) < 5 * math.sqrt(dropout_p * (1 - dropout_p) / visible_count)

    # Given that mask, out and the gradients are exact (flash-attn's rule against the float64 oracle).
    masks = dict(keep=keep, dropout_p=dropout_p)
    truth_out, truth_lse, truth_grads = packed_reference(q, k, v, dout, lengths, True, True, **masks)
    plain_out, _, plain_grads = packed_reference(q, k, v, dout, lengths, True, False, **masks)
    identity = varlen_global_inputs(dict(spec, one_hot_v=True))[2]
    truth_probabilities = packed_reference(q, k, identity, dout, lengths, True, True, **masks)[0]
    assert max_error(result["probabilities"], truth_probabilities) < 1e-5
    check_dropout_result(result, truth_out, plain_out, truth_grads, plain_grads, truth_lse)


@pytest.mark.parametrize("cu_seqlens,max_seqlen,message", [
    (([0, 2, 6], [0, 4, 6]), 4, "cu_seqlens differs across ranks"),
    (([0, 3, 6], [0, 3, 7]), 4, "token counts differ"),
    (([0, 1, 5], [0, 1, 5]), 3, "max_seqlen"),
    (([0, 3, 8], [0, 3, 8]), (5, 2), ("rank(s) [1]", "max_seqlen")),  # too small on rank 1 only
    (([0, 3, 8], [0, 3, 8]), (5, 6), "different max_seqlen"),
])
def test_varlen_bad_local_batches_raise_on_every_rank(workers, cu_seqlens, max_seqlen, message):
    """message: what every rank's ValueError says, or per rank."""
    pool = workers(2)
    pool.submit("varlen_raising", dict(heads=(2, 1, 16), cu_seqlens=cu_seqlens, max_seqlen=max_seqlen))
    for rank, raised in enumerate(pool.collect()):
        expected = message[rank] if isinstance(message, tuple) else message
        assert raised is not None, f"rank {rank} did not raise"
        assert raised[0] == "ValueError" and expected in raised[1], raised


# ---------------------------------------------------------------------------------------------
# In-process: arguments, planning, merging, sharding.

def test_unsupported_arguments_raise_naming_them():
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    with pytest.raises(NotImplementedError, match="alibi_slopes"):
        ring_flash_attn_func(q, k, v, alibi_slopes=torch.rand(2))
    with pytest.raises(NotImplementedError, match="alibi_slopes"):
        zigzag_ring_flash_attn_func(q, k, v, causal=True, alibi_slopes=torch.rand(2))
    with pytest.raises(ValueError, match="positions"):
        ring_flash_attn_func(q, k[:, :4], v[:, :4])
    with pytest.raises(ValueError, match="window_size"):
        ring_flash_attn_func(q, k, v, window_size=(-2, 0))
    with pytest.raises(ValueError, match="qkv"):
        ring_flash_attn_qkvpacked_func(torch.randn(1, 8, 2, 2, 16))
    assert not dist.is_initialized()  # the test process never joins a group; its workers do
    with pytest.raises(RuntimeError, match="init_process_group"):
        zigzag_ring_flash_attn_func(q, k, v, causal=True)


def _positions(rank, world_size, seqlen_local, layout):
    return torch.cat([torch.arange(s.start, s.start + s.length)
                      for s in local_segments(rank, world_size, seqlen_local, layout)])


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_plan_covers_the_global_mask_exactly(layout):
    # Every (query, key) pair a rank's queries see among a step's keys is in exactly one call, and
    # each call's local bottom-right band equals the global band on its rectangle.
    for world_size in (1, 2, 3, 5):
        for seqlen_local in (2, 6, 7):
            if layout == "zigzag" and seqlen_local % 2:
                continue
            seqlen = world_size * seqlen_local
            for window in ((-1, -1), (-1, 0), (0, 0), (3, 0), (2, 5), (-1, 4), (9, -1), (0, 11)):
                full = visible_mask(seqlen, seqlen, *window, "cpu")
                for rank in range(world_size):
                    rows = _positions(rank, world_size, seqlen_local, layout)
                    for key_rank in range(world_size):
                        keys = _positions(key_rank, world_size, seqlen_local, layout)
                        covered = torch.zeros(seqlen_local, seqlen_local, dtype=torch.int64)
                        for call in plan_step(rank, key_rank, world_size, seqlen_local, layout, *window):
                            band = visible_mask(call.query_end - call.query_start, call.key_end - call.key_start,
                                                call.window_left, call.window_right, "cpu")
                            covered[call.query_start:call.query_end, call.key_start:call.key_end] += band
                        expected = full[rows][:, keys].long()
                        assert torch.equal(covered, expected), (world_size, seqlen_local, window, rank, key_rank)


def test_causal_plans_are_the_standard_split():
    world_size, seqlen_local, half = 4, 8, 4
    for rank in range(world_size):
        for key_rank in range(world_size):
            contiguous = plan_step(rank, key_rank, world_size, seqlen_local, "contiguous", -1, 0)
            zigzag = plan_step(rank, key_rank, world_size, seqlen_local, "zigzag", -1, 0)
            if key_rank == rank:
                assert contiguous == zigzag == ((0, 8, 0, 8, -1, 0),)
            elif key_rank < rank:
                assert contiguous == ((0, 8, 0, 8, -1, -1),)
                assert zigzag == ((0, 8, 0, half, -1, -1),)      # every query, the keys' first half
            else:
                assert contiguous == ()
                assert zigzag == ((half, 8, 0, 8, -1, -1),)      # the queries' second half, every key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_merge_over_key_blocks_equals_attention_over_all_keys(dtype):
    # Causal with Sq = 30 > Sk = 20: query i sees key j iff j <= i - 10, so rows 0-9 see no key and
    # others see nothing in the later blocks.  Over keys [a, b) and all rows that band is the call's
    # bottom-right band with window_right = 20 - b.
    q = torch.randn(2, 30, 4, 24, dtype=dtype)
    k, v = (torch.randn(2, 20, 2, 24, dtype=dtype) for _ in range(2))
    out_all, lse_all, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    out, lse = merge.new_accumulators(2, 30, 4, 24, "cpu")
    for key_start, key_end in ((15, 20), (0, 6), (6, 15)):
        block_out, block_lse = ops.attention_forward(q, k[:, key_start:key_end], v[:, key_start:key_end],
                                                     24 ** -0.5, -1, 20 - key_end, 0.0, None, None, 0.0, None,
                                                     False)
        merge.merge_block(out, lse, block_out, block_lse)
    out, lse = merge.finish(out, lse, dtype)
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    assert (out[:, :10] == 0).all() and torch.isinf(lse[..., :10]).all() and (lse[..., :10] > 0).all()
    # Each block's output is rounded to the dtype before the merge: still within the rule.
    truth, truth_lse = attention_reference(q, k, v, causal=True)
    plain, _ = attention_reference(q, k, v, causal=True, upcast=False)
    slack = 1e-5 + rounding_slack(dtype, 3)
    assert_within_rule("out", out, truth, plain, 2, slack)
    assert_within_rule("out against one call", out, out_all, plain, 3, slack)
    assert max_error(lse[..., 10:], truth_lse[..., 10:]) < 1e-5 * truth_lse[..., 10:].abs().max().item()


def test_merge_handles_rows_that_see_nothing():
    out, lse = merge.new_accumulators(1, 3, 1, 2, "cpu")
    inf = math.inf
    nothing = torch.zeros(1, 3, 1, 2)
    merge.merge_block(out, lse, nothing, torch.full((1, 1, 3), inf))            # a block nobody sees
    values = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[0.0, 0.0]]]])
    merge.merge_block(out, lse, values, torch.tensor([[[0.0, -80.0, inf]]]))   # row 2 sees nothing
    merge.merge_block(out, lse, 3 * values, torch.tensor([[[0.0, 80.0, inf]]]))
    out, lse = merge.finish(out, lse, torch.float32)
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([2.0, 4.0]))         # equal weights
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([9.0, 12.0]))        # the second block dominates
    assert (out[0, 2] == 0).all() and lse[0, 0, 2] == inf
    torch.testing.assert_close(lse[0, 0, :2], torch.tensor([math.log(2.0), 80.0]))


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_shard_and_unshard_are_inverse(layout):
    x = torch.randn(2, 24, 3, 5, requires_grad=True)
    for world_size in (1, 2, 3, 4):
        parts = [shard(x, rank, world_size, layout) for rank in range(world_size)]
        assert torch.equal(unshard(parts, layout), x)
        assert sorted(torch.cat([_positions(r, world_size, 24 // world_size, layout)
                                 for r in range(world_size)]).tolist()) == list(range(24))
    lse = torch.randn(2, 3, 24)
    assert torch.equal(unshard([shard(lse, r, 3, layout, dim=2) for r in range(3)], layout, dim=2), lse)
    # shard is differentiable: every position's gradient comes back once.
    sum(shard(x, rank, 3, layout).sum() for rank in range(3)).backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    if layout == "zigzag":
        assert torch.equal(shard(torch.arange(8), 1, 2, layout, dim=0), torch.tensor([2, 3, 4, 5]))
        assert torch.equal(shard(torch.arange(8), 0, 2, layout, dim=0), torch.tensor([0, 1, 6, 7]))


def test_shard_rejects_what_it_cannot_split():
    x = torch.randn(1, 10, 2, 4)
    with pytest.raises(ValueError, match="layout"):
        shard(x, 0, 2, layout="striped")
    with pytest.raises(ValueError, match="multiple of 4"):
        shard(x, 0, 2, layout="zigzag")
    with pytest.raises(ValueError, match="multiple of 3"):
        shard(x, 0, 3, layout="contiguous")
    with pytest.raises(ValueError, match="rank"):
        shard(x, 2, 2, layout="contiguous")


def test_varlen_plan_covers_each_sequence_mask_exactly():
    # Simulate each call as the kernel sees it (sequence b' spans rows from cu_seqlens[b'] on, its first
    # seqused[b'] taking part, with the call's bottom-right band): every (query, key) pair of one
    # sequence that the global band shows is covered exactly once, and no pair across sequences.
    generator = random.Random(0)
    for world_size in (1, 2, 3, 4):
        for _ in range(3):
            local_lengths = [generator.choice([0, 1, 2, 3, 5, 8]) for _ in range(generator.randint(1, 5))]
            cu_values = cu_seqlens_of(local_lengths).tolist()
            total = cu_values[-1]
            for window in ((-1, -1), (-1, 0), (0, 0), (3, 0), (2, 5), (-1, 4), (9, -1), (0, 11)):
                for rank in range(world_size):
                    for key_rank in range(world_size):
                        calls = packed_calls(rank, key_rank, world_size, cu_values, torch.tensor(cu_values), *window)
                        if window in ((-1, -1), (-1, 0)):
                            # Without a window, one plain call (or none): the local cu_seqlens, no seqused.
                            assert len(calls) <= 1 and all(call.seqused_q is None for call in calls)
                        covered = torch.zeros(total, total, dtype=torch.int64)
                        for call in calls:
                            cu_q, cu_k = call.cu_seqlens_q.tolist(), call.cu_seqlens_k.tolist()
                            used_q = (call.seqused_q.tolist() if call.seqused_q is not None
                                      else [b - a for a, b in zip(cu_q, cu_q[1:])])
                            used_k = (call.seqused_k.tolist() if call.seqused_k is not None
                                      else [b - a for a, b in zip(cu_k, cu_k[1:])])
                            assert max(used_q) <= call.max_seqlen_q and max(used_k) <= call.max_seqlen_k
                            for start_q, rows, start_k, keys in zip(cu_q, used_q, cu_k, used_k):
                                band = visible_mask(rows, keys, call.window_left, call.window_right, "cpu")
                                covered[start_q:start_q + rows, start_k:start_k + keys] += band
                        expected = torch.zeros(total, total, dtype=torch.int64)
                        for start, length in zip(cu_values, local_lengths):
                            full = visible_mask(world_size * length, world_size * length, *window, "cpu")
                            piece = full[rank * length:(rank + 1) * length, key_rank * length:(key_rank + 1) * length]
                            expected[start:start + length, start:start + length] = piece.long()
                        assert torch.equal(covered, expected), (world_size, local_lengths, window, rank, key_rank)


def test_varlen_shard_and_unshard_are_inverse():
    lengths = [6, 0, 12, 3 * 4, 24]
    cu_seqlens = cu_seqlens_of(lengths)
    x = torch.randn(sum(lengths), 3, 5, requires_grad=True)
    for world_size in (1, 2, 3, 6):
        parts = [varlen_shard(x, cu_seqlens, rank, world_size) for rank in range(world_size)]
        for local, local_cu_seqlens in parts:
            assert local_cu_seqlens.dtype == torch.int32
            assert torch.equal(local_cu_seqlens, cu_seqlens_of([n // world_size for n in lengths]))
            assert local.shape == (sum(lengths) // world_size, 3, 5)
        assert torch.equal(varlen_unshard([local for local, _ in parts], cu_seqlens), x)
    # Rank r holds piece r of every sequence, in batch order.
    positions = torch.arange(sum(lengths))
    assert varlen_shard(positions, cu_seqlens, 1, 3)[0].tolist() == [2, 3, 10, 11, 12, 13, 22, 23, 24, 25,
                                                                     38, 39, 40, 41, 42, 43, 44, 45]
    lse = torch.randn(4, sum(lengths))
    assert torch.equal(varlen_unshard([varlen_shard(lse, cu_seqlens, r, 2, dim=1)[0] for r in range(2)], cu_seqlens,
                                      dim=1), lse)
    # varlen_shard is differentiable: every token's gradient comes back once.
    sum(varlen_shard(x, cu_seqlens, rank, 3)[0].sum() for rank in range(3)).backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_varlen_shard_rejects_what_it_cannot_split():
    x = torch.randn(10, 2, 4)
    with pytest.raises(ValueError, match=r"cu_seqlens.*\[3, 7\].*multiple of world_size = 2"):
        varlen_shard(x, cu_seqlens_of([3, 7]), 0, 2)
    with pytest.raises(ValueError, match="cu_seqlens ends at 8"):
        varlen_shard(x, cu_seqlens_of([4, 4]), 0, 2)
    with pytest.raises(TypeError, match="cu_seqlens"):
        varlen_shard(x, cu_seqlens_of([4, 6]).float(), 0, 2)
    with pytest.raises(ValueError, match="non-decreasing"):
        varlen_shard(x, torch.tensor([0, 6, 4, 10], dtype=torch.int32), 0, 2)
    with pytest.raises(ValueError, match="rank"):
        varlen_shard(x, cu_seqlens_of([4, 6]), 2, 2)
    with pytest.raises(ValueError, match="cu_seqlens ends at 10"):
        varlen_unshard([x[:4], x[:4]], cu_seqlens_of([4, 6]))


def test_varlen_unsupported_arguments_raise_naming_them():
    q, k, v = (torch.randn(8, 2, 16) for _ in range(3))
    cu_seqlens = cu_seqlens_of([2, 6])
    with pytest.raises(NotImplementedError, match="alibi_slopes is not supported by ring attention"):
        ring_flash_attn_varlen_func(q, k, v, cu_seqlens, 6, alibi_slopes=torch.rand(2))
    with pytest.raises(ValueError, match="tokens"):
        ring_flash_attn_varlen_func(q, k[:4], v[:4], cu_seqlens, 6)
    with pytest.raises(ValueError, match="window_size"):
        ring_flash_attn_varlen_func(q, k, v, cu_seqlens, 6, window_size=(-2, 0))
    with pytest.raises(ValueError, match="total_tokens"):
        ring_flash_attn_varlen_func(q[None], k[None], v[None], cu_seqlens, 6)
    with pytest.raises(TypeError, match="cu_seqlens"):
        ring_flash_attn_varlen_func(q, k, v, [0, 2, 8], 6)
    with pytest.raises(ValueError, match="qkv"):
        ring_flash_attn_varlen_qkvpacked_func(torch.randn(8, 2, 2, 16), cu_seqlens, 6)
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        ring_flash_attn_varlen_func(q, k, v, cu_seqlens, 6, causal=True)
