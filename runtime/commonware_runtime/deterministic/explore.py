"""Systematic exploration: every schedule within K deviations of the canonical one.

Delay bounding (Emmi, Qadeer and Rakamaric, POPL 2011): the canonical schedule runs the
oldest ready callback at every decision (asyncio's own order) and wakes on time.  A schedule is described by the choice points where it does
something else; taking the ready callback of rank r (0 = oldest) costs r *deviations* (the r
older ones are each delayed once), and a late timer wake-up costs one.  ``explore`` runs every schedule whose deviations add up
to at most K, cheapest first, by stateless re-execution: a run with deviations D, the last at
choice point p, spawns the schedules that add one deviation at a choice point after p, read
off that run's own choice points.  Every schedule is reached by exactly one path, so the
count is exact and an exhausted exploration without failure is a guarantee, not a sample.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .runner import Config, Runner
from .strategies import Deviations
from .trace import Recorder, Schedule

__all__ = ["Exploration", "explore"]


@dataclass
class Exploration:
    """What ``explore`` found.  ``exhausted`` and no ``failure``: no schedule within
    ``max_deviations`` fails."""

    schedules: int
    exhausted: bool
    failure: BaseException | None
    schedule: Schedule | None
    max_deviations: int
    deviations: dict[int, int] = field(default_factory=dict)  # of the failing schedule: choice point -> option
    limit: int = 0

    def summary(self) -> str:
        k = self.max_deviations
        if self.failure is not None:
            where = ", ".join(f"choice point {p} took option {o}" for p, o in sorted(self.deviations.items()))
            return (f"schedule {self.schedules} of those within {k} deviation(s) fails with "
                    f"{type(self.failure).__name__}: {self.failure} ({where or 'the canonical schedule itself'})")
        if self.exhausted:
            return f"explored all {self.schedules} schedule(s) within {k} deviation(s): none fails"
        return (f"stopped after {self.schedules} schedule(s) (the limit of {self.limit}) before exhausting those "
                f"within {k} deviation(s): no failure so far, but no guarantee either")


def _cost(kind: str, option: int) -> int:
    return 1 if kind == "late" else option


def explore(
    main: Callable[[Any], Awaitable[Any]],
    config: Config | None = None,
    *,
    max_deviations: int = 2,
    limit: int = 100_000,
) -> Exploration:
    """Run ``main`` under every schedule within ``max_deviations`` of the canonical one
    (``config`` gives seed, ordering, timeout...; its strategy is replaced), stopping at the
    first failure or after ``limit`` schedules."""
    if isinstance(max_deviations, bool) or not isinstance(max_deviations, int) or max_deviations < 0:
        raise ValueError(f"max_deviations must be a non-negative int, got {max_deviations!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    if not callable(main):
        raise TypeError(f"main must be an async function taking the context, got {main!r}")
    if config is None:
        config = Config()
    if not isinstance(config, Config):
        raise TypeError(f"config must be a deterministic.Config, got {type(config).__name__}")
    queue: deque[tuple[dict[int, int], int, int]] = deque([({}, max_deviations, -1)])
    runs = 0
    while queue:
        if runs >= limit:
            return Exploration(runs, False, None, None, max_deviations, limit=limit)
        deviations, budget, last = queue.popleft()
        strategy = Deviations(deviations)
        recorder = Recorder()
        runs += 1
        try:
            Runner(config.with_strategy(strategy), recorder=recorder).start(main)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the failure is the result
            return Exploration(runs, False, exc, recorder.schedule, max_deviations, dict(deviations), limit)
        if budget == 0:
            continue
        for point in range(last + 1, len(strategy.counts)):
            kind, n = strategy.counts[point]
            options = 2 if kind == "late" else n
            for option in range(1, options):
                cost = _cost(kind, option)
                if cost > budget:
                    break
                queue.append(({**deviations, point: option}, budget - cost, point))
    return Exploration(runs, True, None, None, max_deviations, limit=limit)
