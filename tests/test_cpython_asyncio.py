"""CPython's own asyncio tests (queues, locks, wait_for) pass on ``deterministic.EventLoop``.

Runs ``benchmarks/cpython_asyncio.py`` for the three fast modules on seed 0 with
``ordering="fifo"``: every test that passes on stock asyncio must pass on our loop, except
the ones the harness excludes with a reason (CPython's TestLoop, real threads, real I/O).
Each module runs in its own child process, stock and ours in parallel.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "benchmarks" / "cpython_asyncio.py"
MODULES = ("test_queues", "test_locks", "test_waitfor")


def _load_harness():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cpython_asyncio_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
_unavailable = harness.test_package_available()


@pytest.mark.skipif(_unavailable is not None, reason=_unavailable or "")
def test_cpython_asyncio_modules_pass_on_the_deterministic_loop() -> None:
    comparison = harness.compare(MODULES, seeds=(0,), ordering="fifo")
    report = harness.report(comparison)
    for module in comparison.modules:
        # The run is meaningful only if the tests ran, on both loops, and mostly on ours.
        assert module.stock, f"{module.module}: no test ran on stock asyncio\n{report}"
        ours = module.ours[0]
        assert ours, f"{module.module}: no test ran on our loop\n{report}"
        assert sum(o.on_our_loop for o in ours.values()) * 2 > len(ours), report
    assert not comparison.regressions, "tests that pass on stock asyncio fail on ours:\n" + report
