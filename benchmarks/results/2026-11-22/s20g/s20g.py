"""Session 20 (g): line-level host time of the eager step's Python layers, after the fast launches.

Every statement of the listed functions gets a stamp before it (an AST rewrite of their source, run in their
module's globals); the GPU is kept busy by a sleep kernel; median over 80 steps of the time from each stamp to the
next one in the same thread.  Shapes: 1k causal D 128 (B16 H16) and issue 3's window (1024, 0) at 16k (B1 H16)."""
import ast, inspect, statistics, sys, textwrap, threading, time
import torch
import flashtron
from flashtron import interface, ops, validation
from flashtron.kernels import launch, hopper_forward as hf, hopper_backward as hb, compiled
print(torch.cuda.get_device_name(), torch.__version__, flush=True)

STAMPS = []


def _stamp(name):
    STAMPS.append((name, time.perf_counter_ns(), threading.get_ident()))


class Inserter(ast.NodeTransformer):
    def __init__(self, label):
        self.label = label

    def _stmts(self, body):
        out = []
        for stmt in body:
            self.visit(stmt)
            call = ast.parse(f"__stamp({self.label + ':' + str(stmt.lineno)!r})").body[0]
            out += [call, stmt]
        return out

    def generic_visit(self, node):
        for field in ("body", "orelse", "finalbody"):
            if isinstance(getattr(node, field, None), list) and getattr(node, field) and isinstance(
                    getattr(node, field)[0], ast.stmt) and not isinstance(node, ast.Module):
                setattr(node, field, self._stmts(getattr(node, field)))
        return node


def instrument(owner, name, static=False):
    fn = getattr(owner, name)
    fn = getattr(fn, "__func__", fn)
    src = textwrap.dedent(inspect.getsource(fn))
    lines, start = inspect.getsourcelines(fn)
    tree = ast.parse(src)
    ast.increment_lineno(tree, start - 1)
    func = tree.body[0]
    func.decorator_list = []
    label = f"{fn.__module__.split('.')[-1]}.{fn.__name__}"
    Inserter(label).generic_visit(func)
    func.body.append(ast.parse(f"__stamp({label + ':end'!r})").body[0])
    ast.fix_missing_locations(tree)
    glb = fn.__globals__
    glb["__stamp"] = _stamp
    ns = {}
    exec(compile(tree, inspect.getsourcefile(fn), "exec"), glb, ns)
    new = ns[fn.__name__]
    setattr(owner, name, staticmethod(new) if static else new)


for owner, name, static in ((interface, "_attention", False), (ops, "attention", False),
                            (ops._Attention, "forward", True), (ops, "_backward", False), (ops, "_setup_context", False),
                            (launch, "forward", False), (launch, "backward", False), (hf, "forward", False),
                            (hb, "backward", False), (hb, "unsupported_reason", False),
                            (hf, "unsupported_reason", False), (compiled.FastLaunch, "launch", False),
                            (validation, "check_qkv", False)):
    instrument(owner, name, static)
ops._Attention.backward = staticmethod(ops._backward)


def busy():
    torch.cuda.synchronize()
    torch.cuda._sleep(100_000_000)


for label, (B, S, H, D, window) in {"1k causal D128": (16, 1024, 16, 128, (-1, -1)),
                                    "16k window (1024, 0) D128": (1, 16384, 16, 128, (1024, 0))}.items():
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)

    def step():
        flashtron.flash_attn_func(q, k, v, causal=True, window_size=window).backward(g)
    for _ in range(3):
        for t in (q, k, v):
            t.grad = None
        step()
    torch.cuda.synchronize()
    deltas, totals = {}, []
    for i in range(80):
        if i % 5 == 0:
            busy()
        for t in (q, k, v):
            t.grad = None
        STAMPS.clear()
        _stamp("step:start")
        step()
        _stamp("step:end")
        totals.append((STAMPS[-1][1] - STAMPS[0][1]) / 1e3)
        last = {}
        for name, t, tid in STAMPS:
            if tid in last:
                prev, pt = last[tid]
                deltas.setdefault((prev, name), []).append((t - pt) / 1e3)
            last[tid] = (name, t)
    torch.cuda.synchronize()
    print(f"\n=== {label}: step {statistics.median(totals):.0f} us (median of 80); stamp -> next stamp, median us (>= 1.5)")
    rows = [(statistics.median(v), len(v) / 80, a, b) for (a, b), v in deltas.items()]
    for us, n, a, b in sorted(rows, key=lambda r: -r[0] * r[1]):
        if us >= 1.5:
            print(f"  {us:7.1f} x{n:4.1f}  {a} -> {b}")
