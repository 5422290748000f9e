"""Shared test settings: poisoned kernel outputs, the engine under test, GPU skips."""

import os

os.environ.setdefault("FLASHTRON_POISON_OUTPUTS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# A test of a Triton kernel itself: it runs on a GPU, or on CPU tensors under the interpreter.
triton_kernel = pytest.mark.skipif(not (INTERPRET or torch.cuda.is_available()), reason="a Triton kernel")
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where such a test puts its tensors

# Under pytest-xdist (`-n N`, as scripts/test.sh runs), each worker gets its share of torch's threads:
# N workers each running torch's default of one thread per core oversubscribe the cores.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def monkeypatch(monkeypatch):
    """pytest's monkeypatch, forgetting the Hopper host functions' launch plans before each change and after the
    test: a plan replays the launch its host function derived under the module's settings at the time."""
    from flashtron.kernels import launch_plans

    def forgetting(change):
        def forget_then_change(*args, **kwargs):
            launch_plans.clear()
            return change(*args, **kwargs)
        return forget_then_change
    monkeypatch.setattr, monkeypatch.delattr = forgetting(monkeypatch.setattr), forgetting(monkeypatch.delattr)
    yield monkeypatch
    launch_plans.clear()


def pytest_report_header(config):
    engine = "Triton kernels under the interpreter" if INTERPRET else "PyTorch blockwise path"
    return f"flashtron CPU tensors run: {engine}; CUDA available: {torch.cuda.is_available()}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
