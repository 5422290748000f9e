"""Launch plans: a Hopper host function's launches, kept per call signature.

A host function derives its kernels' grids, constexprs, scalar arguments and descriptor geometry from the call's
shapes, strides, dtypes and scalar arguments alone.  Its first call of a signature computes them and launches
through `compiled.FastLaunch.prepare`, which returns a `compiled.Prepared` launch; later calls of the same
signature look that up by `key` and pass only their tensors.  At short lengths an eager training step is bound by
the host (BENCHMARKS.md, sessions 20-35), and this is the host function's whole cost then: the key, the tensor
maps and the C launcher.

The key holds every input of the derivation: per tensor its shape, strides, dtype and 16-byte alignment (Triton
specialises pointers on it), the tensors' device, and the scalars (a prepared launch checks the current device
itself).  The module-level choices a host function reads (its tuned constants and rules, the SM count) are not in
it: code that changes them (tests, A/B scripts) calls `clear` first, as tests/conftest.py does for every
monkeypatch.
"""

MAX_PLANS = 512  # per host function; past it the plans start over (shapes that never repeat, e.g. varlen lengths)
_TABLES = []


def table() -> dict:
    """A host function's plans, keyed by `key`."""
    plans = {}
    _TABLES.append(plans)
    return plans


def clear() -> None:
    """Forget every host function's plans."""
    for plans in _TABLES:
        plans.clear()


def key(tensors: tuple, *scalars) -> tuple:
    """The plan key of a call on `tensors` (None allowed) with these scalar arguments."""
    return (tensors[0].get_device(), scalars,
            *[None if t is None else (t.shape, t.stride(), t.dtype, t.data_ptr() % 16 == 0) for t in tensors])


def remember(plans: dict, plan_key: tuple, prepared) -> None:
    """Keep a host function's prepared launch (or launches) under plan_key; None is not kept, so the next call of
    the signature takes the host function's full path again."""
    if prepared is None:
        return
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[plan_key] = prepared
