"""Schedules as Hypothesis data: ``@given(schedules())`` explores data and schedule together.

A drawn schedule is a list of small integers, one per choice point of the run (which ready
callback runs next, whether an idle wake-up is late), each taken modulo the number of options there; missing entries and zeros
are the canonical choice (asyncio's own order).  Hypothesis shrinks lists toward fewer and
smaller entries, so a failing schedule shrinks toward the canonical one, and its example
database stores the list, so the failure is replayed first on the next run::

    from hypothesis import given, strategies as st
    from commonware_runtime import deterministic
    from commonware_runtime.hypothesis import schedules

    @given(schedules(), st.integers(2, 5))
    def test_counter(schedule, workers):
        assert schedule.run(make_main(workers)) == workers

The falsifying example prints as ``DrawnSchedule(choices=(0, 1), ordering='any')``, which
is itself the code that reruns it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hypothesis import strategies as st

from .deterministic.runner import Config, Runner
from .deterministic.strategies import Choices
from .deterministic.trace import Recorder, Schedule

__all__ = ["DrawnSchedule", "schedules"]

T = TypeVar("T")


class DrawnSchedule:
    """One schedule drawn by Hypothesis; ``run(main)`` runs a fresh runtime under it."""

    def __init__(self, choices: tuple[int, ...] | list[int] = (), ordering: str = "any", config: Config | None = None) -> None:
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in choices):
            raise ValueError(f"choices must be non-negative ints, got {choices!r}")
        base = config if config is not None else Config()
        self.config = base.with_ordering(ordering)
        self.choices = tuple(choices)
        self.recorded: Schedule | None = None  # the last run's schedule (replayable)

    def run(self, main: Callable[[Any], Awaitable[T]]) -> T:
        recorder = Recorder()
        try:
            return Runner(self.config.with_strategy(Choices(self.choices)), recorder=recorder).start(main)
        finally:
            self.recorded = recorder.schedule

    def __repr__(self) -> str:
        choices = list(self.choices)
        while choices and choices[-1] == 0:
            choices.pop()  # trailing zeros are canonical anyway
        extra = "" if self.config == Config().with_ordering(self.config.ordering) else f", config={self.config!r}"
        return f"DrawnSchedule(choices={tuple(choices)!r}, ordering={self.config.ordering!r}{extra})"


def schedules(config: Config | None = None, *, ordering: str | None = None, max_choices: int = 200) -> st.SearchStrategy[DrawnSchedule]:
    """A Hypothesis strategy of ``DrawnSchedule`` values (see the module docstring).

    ``config`` gives seed, timeout, cycle... (its strategy is replaced); ``ordering``
    overrides its ordering; ``max_choices`` bounds how many choice points are drawn (the
    rest of a longer run is canonical).
    """
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be a deterministic.Config, got {type(config).__name__}")
    if isinstance(max_choices, bool) or not isinstance(max_choices, int) or max_choices < 0:
        raise ValueError(f"max_choices must be a non-negative int, got {max_choices!r}")
    base = config if config is not None else Config()
    chosen = ordering if ordering is not None else base.ordering
    base.with_ordering(chosen)  # validates the ordering at the call
    # builds() (not map) so that Hypothesis prints the falsifying value as the call that makes it.
    return st.builds(
        DrawnSchedule,
        choices=st.lists(st.integers(0, 15), max_size=max_choices).map(tuple),
        ordering=st.just(chosen),
        config=st.just(base),
    )
