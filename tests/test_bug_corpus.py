"""The bug corpus of ``benchmarks/bug_corpus.py``: each program is correct under asyncio's own
order and the swarm strategy finds its bug within 1,000 seeds."""

from __future__ import annotations

import os
import sys

import pytest
from commonware_runtime import RuntimeStalled, deterministic

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

from bug_corpus import BUGS, Bug  # noqa: E402

SWARM_BUDGET = 1000


def test_corpus_shape() -> None:
    names = [bug.name for bug in BUGS]
    assert len(names) >= 14 and len(set(names)) == len(names)
    for bug in BUGS:
        assert bug.depth in (1, 2, 3) and bug.depth_reason and bug.kind and bug.description


@pytest.mark.parametrize("bug", [b for b in BUGS if not b.fifo_reachable], ids=lambda b: b.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correct_under_fifo_order(bug: Bug, seed: int) -> None:
    # ordering="fifo": callbacks in registration order, as asyncio runs them; the seed only
    # picks timing (late wake-ups, timer ties), which none of these programs depends on.
    bug.execute(deterministic.Config(seed=seed, ordering="fifo"))


@pytest.mark.parametrize("bug", BUGS, ids=lambda b: b.name)
def test_swarm_finds_the_bug(bug: Bug) -> None:
    # A bug stock asyncio can hit is a timing bug: its timing is explored under ordering="fifo".
    ordering = "fifo" if bug.fifo_reachable else "any"
    for seed in range(SWARM_BUDGET):
        try:
            bug.execute(deterministic.Config(seed=seed, strategy="swarm", ordering=ordering))
        except (AssertionError, RuntimeStalled):  # the bug, not some other breakage
            return
    pytest.fail(f"swarm did not find {bug.name} in {SWARM_BUDGET} seeds (ordering={ordering!r})")

